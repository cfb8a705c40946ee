"""Models named by their Hugging Face Hub id, read from the local Hugging Face cache only.

``privaudit scan ORG/NAME`` (and ``--base``, ``--lora``, ``mitigate``, ``query``): an argument that is not an
existing local path but looks like a Hub repository id is resolved with ``huggingface_hub.snapshot_download(...,
local_files_only=True)`` to its cached snapshot folder (``--revision``: a branch, tag or commit, default
"main"), which is then checked and loaded exactly as a local folder (safetensors only unless
``--allow-pickle``). The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default,
read when the command runs. Nothing is downloaded: a repository or revision missing from the cache is a
one-line error saying how to fetch it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from privaudit.io.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def hub_cache_dir() -> str:
    """The Hugging Face hub cache this process reads (environment read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve_location(spec: str | Path, *, revision: str | None = None, what: str = "model") -> Path:
    """A local path as given; a Hub id (``ORG/NAME``) not present as a local path -> its cached snapshot folder."""
    path = Path(spec)
    text = str(spec)
    if path.exists() or not HUB_ID.match(text) or text.startswith((".", "/")):
        if revision is not None and not path.exists() and not HUB_ID.match(text):
            raise InputError(f"{spec}: --revision applies to a Hub id (ORG/NAME), and this is neither a Hub id nor "
                             "an existing folder")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    at = f" at revision {revision}" if revision else ""
    try:
        return Path(snapshot_download(text, revision=revision, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise InputError(f"{spec}: no local folder of that name, and the {what} {text}{at} is not in the local Hugging "
                         f"Face cache ({cache}); privaudit never downloads: fetch it first with `hf download {text}"
                         f"{' --revision ' + revision if revision else ''}` (or pass a folder)") from None
    except HFValidationError as e:
        raise InputError(f"{spec}: not a valid Hub id ({str(e).splitlines()[0]})") from None
