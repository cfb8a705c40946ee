"""The digits-dup-text target (``privaudit.fixtures.digits_dup_text``): a captioned model that copies only its
duplicated members.

The cheap tests check the member folder's construction (the repeats as files, each under its original's
caption) and ``fixture.json``'s duplicate groups on a build with a few training steps; the slow one builds the
target itself (about 2.5 minutes on one CPU thread: smaller variants left the regime, see the fixture's
docstring), checks that a scan finds copies of nearly every duplicated member and of almost no single one, and
that the per-image risk list names them and nobody on the null control.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_scan
from PIL import Image

from privaudit.fixtures.digits_dup_text import DupTextDigitsConfig, write_copies
from privaudit.fixtures.digits_text import write_captioned

pytest.importorskip("transformers")

SMALL = DupTextDigitsConfig()  # the recipe: smaller variants (300 members, or a shorter VAE) left the regime


def metadata(folder: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    return {r["file_name"]: r["text"] for r in rows}


def test_copies_are_files_under_their_originals_caption(tmp_path):
    images = np.repeat(np.arange(0, 250, 50, dtype=np.uint8), 64).reshape(5, 8, 8)  # member i: all pixels 50 i
    captions = [f"a handwritten digit {w}, sample x{i}" for i, w in enumerate(("zero", "one", "two", "three", "four"))]
    write_captioned(images, captions, tmp_path, "members")
    cfg = DupTextDigitsConfig(n_members=5, n_exposed=2, duplicates=4, near_noise=4.0)
    train, caps, groups = write_copies(tmp_path, images, captions, cfg)

    assert groups == {f"members_{i:04d}.png": [f"members_{i:04d}.png"] + [f"members_{i:04d}_copy{k:02d}.png"
                                                                         for k in (1, 2, 3)] for i in (0, 1)}
    meta = metadata(tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert sorted(meta) == files and len(files) == 5 + 2 * 3  # every file listed, nothing else
    for canonical, group in groups.items():
        assert {meta[f] for f in group} == {meta[canonical]}  # a copy carries its original's caption
    # the training set is exactly the files, with their captions
    assert len(train) == len(caps) == len(files)
    on_disk = {f: np.asarray(Image.open(tmp_path / f)) for f in files}
    for img, cap in zip(train, caps):
        match = [f for f, px in on_disk.items() if np.array_equal(px, img) and meta[f] == cap]
        assert match, cap
    # odd copies exact, even ones near duplicates (a few grey levels off)
    orig = images[0].astype(int)
    assert np.array_equal(on_disk["members_0000_copy01.png"], images[0])
    near = on_disk["members_0000_copy02.png"].astype(int)
    assert not np.array_equal(near, orig) and np.abs(near - orig).mean() < 10


def test_fixture_layout_and_duplicate_groups(tmp_path):
    from privaudit.fixtures import digits_dup_text

    cfg = DupTextDigitsConfig(n_members=12, n_holdout=16, n_null=8, n_exposed=2, duplicates=3, vae_steps=2,
                              unet_steps=2, batch_size=4)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = digits_dup_text.build(out=tmp_path / "fx", cfg=cfg, progress=False)
    finally:
        torch.set_num_threads(n)
    fx = json.loads((out / "fixture.json").read_text())
    assert fx["fixture"] == "digits-dup-text" and fx["config"]["duplicates"] == 3
    assert fx["duplicated"] == {"members_0000.png": 3, "members_0001.png": 3}
    assert fx["duplicate_groups"]["members_0001.png"] == [
        "members_0001.png", "members_0001_copy01.png", "members_0001_copy02.png"]
    assert fx["sizes"]["members"] == 12 and fx["sizes"]["training_set"] == 12 + 2 * 2
    meta = metadata(out / "members")
    assert len(meta) == fx["sizes"]["training_set"] == len(list((out / "members").glob("*.png")))
    assert meta["members_0000_copy02.png"] == meta["members_0000.png"] != meta["members_0001.png"]
    prompts = [line.split("\t") for line in (out / "prompts.tsv").read_text().splitlines()]
    assert len(prompts) == len({p for p, _ in prompts}) == 12 + 16  # each distinct caption once
    assert {p for p, y in prompts if y == "1"} == set(meta.values())
    assert (out / "model" / "model_index.json").is_file() and (out / "model" / "tokenizer" / "vocab.json").is_file()


@pytest.mark.slow
def test_duplicated_members_are_copied_singles_are_not_and_the_risk_list_names_them(tmp_path):
    from privaudit.fixtures import digits_dup_text

    cache = Path(os.environ.get("PRIVAUDIT_TEST_CACHE", REPO / ".pytest_cache" / "privaudit"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only synchronise on a busy machine
    detectors = ("nn", "promptcopy")  # both copy detectors a text model gets: unconditional and per caption
    try:
        # the recipe itself (about 2.5 minutes to build; a shorter VAE training copied too few exposed images)
        target = digits_dup_text.build(out=cache / "digits-dup-text", cfg=SMALL, progress=False)
        res = run_scan(target, tmp_path / "scan", attacks=("loss",), detectors=detectors)
        null = run_scan(target, tmp_path / "null", members="null", attacks=("loss",), detectors=detectors)
    finally:
        torch.set_num_threads(n)
    groups = json.loads((target / "fixture.json").read_text())["duplicate_groups"]
    owner = {f: canonical for canonical, files in groups.items() for f in files}
    table = pd.read_csv(tmp_path / "scan" / "nn.csv")
    copied = table.loc[table["copy"], "nearest_member"].map(lambda m: owner.get(m, m)).value_counts().to_dict()
    assert not any(re.search(r"_copy\d+", m) for m in copied)  # every copy file belongs to a group
    assert len(set(groups) & set(copied)) >= len(groups) - 1, copied  # nearly every duplicated image is reproduced
    assert len(set(copied) - set(groups)) <= 3, copied  # of 800 singles, at most a few
    # the per-image risk list names the reproduced duplicates: those with two copies or more over both detectors
    # (one sample within the 1% radius is what chance gives), grouped by the fixture's truth; nobody on the null
    risk = pd.read_csv(tmp_path / "scan" / "at_risk.csv")
    copies = risk.groupby(risk["member_id"].map(lambda m: owner.get(m, m)))["copies"].sum()
    truth = {g for g in groups if copies.get(g, 0) >= 2}
    assert len(truth) >= 7, copies[list(groups)]
    listed = {owner.get(m, m) for m in risk.loc[risk["at_risk"], "member_id"]}
    recall, precision = len(listed & truth) / len(truth), len(listed & truth) / max(len(listed), 1)
    assert recall >= 0.9 and precision >= 0.8, (recall, precision, sorted(listed))
    assert res["at_risk"]["n_reproduced"] >= len(truth) - 1 and res["verdict"]["level"] in ("high", "critical")
    assert null["at_risk"]["n_at_risk"] == 0 and null["verdict"]["level"] == "low"
