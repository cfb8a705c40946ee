"""Prompt files: one prompt per line, optionally a tab and a label (member / unseen).

Blank lines and lines starting with ``#`` are ignored. Labels: ``1``/``member``/``memorised``
(a training caption) or ``0``/``holdout``/``unseen`` (never trained on); either every line has
one or none does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privaudit.io.errors import InputError

POSITIVE = {"1", "member", "members", "memorised", "memorized", "true", "yes"}
NEGATIVE = {"0", "holdout", "unseen", "nonmember", "non-member", "false", "no"}


def read_prompt_file(path: str | Path) -> tuple[list[str], np.ndarray | None]:
    """Prompts and labels (1/0, or None when the file has no label column)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompt file does not exist")
    prompts: list[str] = []
    labels: list[int | None] = []
    nos: list[int] = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" in line:
            text, lab = line.rsplit("\t", 1)
            key = lab.strip().lower()
            if key not in POSITIVE | NEGATIVE:
                raise InputError(f"{path}:{no}: label {lab.strip()!r} is not one of 1/member/memorised or 0/holdout/unseen")
            labels.append(1 if key in POSITIVE else 0)
        else:
            text = line
            labels.append(None)
        prompts.append(text.strip())
        nos.append(no)
    if not prompts:
        raise InputError(f"{path}: no prompts (one per line)")
    have = [lab is not None for lab in labels]
    if any(have) and not all(have):
        raise InputError(f"{path}:{nos[have.index(not have[0])]}: either every prompt has a label column or none does")
    return prompts, (np.asarray(labels, int) if all(have) else None)
