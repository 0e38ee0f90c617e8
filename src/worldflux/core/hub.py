"""Where a pretrained directory is: a local folder, or a Hugging Face Hub repo id.

`resolve_folder(ref, files)` answers a local directory for either form. A Hub id (``"user/name"``,
optionally ``"user/name@revision"``) is fetched with ``huggingface_hub.snapshot_download``, which
needs the optional ``hub`` extra (``pip install 'worldflux[hub]'``) and honours its own settings:
``HF_HUB_OFFLINE=1`` answers from the local cache only (``HF_HUB_CACHE`` /
``~/.cache/huggingface/hub``), ``HF_TOKEN`` reaches private repos. Only `files` are downloaded,
and what they hold is parsed by their readers (JSON and safetensors), never unpickled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from worldflux.core.exceptions import ConfigError

# A Hub repo id: owner/name of letters, digits, '-', '_', '.', then an optional @revision.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")


def is_hub_id(ref: str) -> bool:
    """Whether `ref` reads as ``"owner/name"`` or ``"owner/name@revision"``."""
    return _HUB_ID.match(ref) is not None


def resolve_folder(ref: str | os.PathLike[str], files: list[str], caller: str) -> Path:
    """A local directory holding `ref`'s files: `ref` itself when it is an existing directory,
    else the Hub snapshot of the repo id `ref` (only `files` fetched). Anything else, or a Hub
    failure, is one `ConfigError` starting with `caller`."""
    path = Path(ref)
    if path.is_dir():
        return path
    text = os.fspath(ref)
    if path.exists():
        raise ConfigError(f"{caller}: {text} is a file; expected a directory or a Hub id")
    match = _HUB_ID.match(text)
    if match is None or text.startswith(("./", "../", "~")):
        raise ConfigError(
            f"{caller}: {text} does not exist; expected a directory written by save_pretrained "
            "or a Hugging Face Hub id ('owner/name' or 'owner/name@revision')"
        )
    return _snapshot(match["repo"], match["rev"], files, caller)


def _snapshot(repo: str, revision: str | None, files: list[str], caller: str) -> Path:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(
            f"{caller}: {repo!r} is not a local directory, and loading a Hub id needs "
            "huggingface_hub: pip install 'worldflux[hub]'"
        ) from None
    try:
        folder = huggingface_hub.snapshot_download(
            repo, revision=revision, allow_patterns=files, library_name="worldflux"
        )
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes one clear line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        offline = " (HF_HUB_OFFLINE is set: only repos already in the cache load)" * _offline()
        raise ConfigError(
            f"{caller}: {repo!r} is not a local directory, and fetching it from the Hugging Face "
            f"Hub failed{offline}: {type(err).__name__}: {first}"
        ) from err
    return Path(str(folder))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
