"""The files of a checkpoint directory: checksums, fsync, write failures, stale temp dirs.

Every checkpoint (format 2) holds ``checksums.json``: the xxh3_64 of every file in it, written
last, before the directory is fsync'ed and renamed into place. Replay chunks are the exception:
they are named by the xxh3_128 of their own bytes (see `worldflux.data.replay_chunks`), and the
checksummed ``replay.json`` lists those names. Loading checks every listed file before parsing
any of them, so a flipped byte anywhere gives a `CheckpointError` naming the file, never a
silently different tree.

Temp directories are named ``.<name>.tmp-<pid>`` (being written), ``.<name>.old-<pid>`` (the
previous version of a step being overwritten) and ``.<name>.del-<pid>`` (being deleted);
`sweep` removes those of writers that are no longer alive (a kill -9, a full disk).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from worldflux.core.exceptions import WorldFluxError

MANIFEST = "checksums.json"
ALGO = "xxh3_64"
CHUNK_DIRS = {"chunks"}  # content-addressed replay chunks: verified against their names
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_TEMP = re.compile(r"^\.(?P<name>step_\d+)\.(?P<kind>tmp|old|del)-(?P<pid>\d+)$")
_BLOCK = 1 << 22


class CheckpointError(WorldFluxError, ValueError):
    """A checkpoint directory is missing, incomplete, damaged or not in the expected format."""


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def damaged(file: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint: {file} is damaged: {why}")


def write_failed(path: Path, err: OSError) -> CheckpointError:
    """The one-line error for a save that failed with `err` (its temp dir already removed)."""
    kept = "the partial checkpoint was removed, older checkpoints are kept"
    if err.errno in DISK_FULL:
        return CheckpointError(f"checkpoint: disk full while writing {path}; {kept}")
    return CheckpointError(f"checkpoint: could not write {path} ({one_line(err)}); {kept}")


# --- checksums ---------------------------------------------------------------------------------


def file_digest(file: Path) -> str:
    h = xxhash.xxh3_64()
    with open(file, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def read_json(file: Path) -> Any:
    """Parsed JSON of `file`; a missing or unparsable file is a `CheckpointError` naming it."""
    try:
        return json.loads(file.read_bytes())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint: {file} is missing") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError (a torn or flipped file)
        raise damaged(file, f"not valid JSON ({one_line(e)})") from e


def _listed_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in CHUNK_DIRS)
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in sorted(files) if (rel / f).as_posix() != MANIFEST]
    return out


def write_manifest(root: Path, known: dict[str, str] | None = None) -> None:
    """Write ``checksums.json`` for every file under `root`; `known` digests skip a re-read."""
    known = known or {}
    files = {rel: known.get(rel) or file_digest(root / rel) for rel in _listed_files(root)}
    with open(root / MANIFEST, "w") as f:
        json.dump({"algo": ALGO, "files": files}, f)


def verify_manifest(root: Path) -> bool:
    """Check every file ``checksums.json`` lists; False when there is none (format 1)."""
    file = root / MANIFEST
    if not file.is_file():
        return False
    doc = read_json(file)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or doc.get("algo") != ALGO:
        raise damaged(file, f"expected {{'algo': {ALGO!r}, 'files': {{...}}}}")
    for rel, want in files.items():
        parts = PurePosixPath(rel).parts
        if not isinstance(want, str) or rel.startswith("/") or ".." in parts:
            raise damaged(file, f"bad entry {rel!r}: {want!r}")
        target = root.joinpath(*parts)
        if not target.is_file():
            raise damaged(target, f"missing (listed in {MANIFEST})")
        got = file_digest(target)
        if got != want:
            raise damaged(target, f"checksum mismatch ({ALGO} {got}, {MANIFEST} says {want})")
    return True


# --- durable writes and temp dirs ----------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`; hard-linked files were synced when written."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            file = os.path.join(dirpath, name)
            if os.stat(file).st_nlink > 1:
                continue
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep(root: Path) -> list[Path]:
    """Remove the temp dirs of dead writers under `root`; returns what was swept.

    A writer killed between the two renames of an overwrite leaves the step only as its
    ``.old-<pid>`` copy (complete): that one is renamed back instead.
    """
    if not root.is_dir():
        return []
    swept = []
    for entry in sorted(root.iterdir()):
        m = _TEMP.match(entry.name)
        if m is None or pid_alive(int(m["pid"])):
            continue
        target = root / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.rename(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        swept.append(entry)
    return swept


def remove_dir(path: Path) -> None:
    """Delete a checkpoint: renamed out of the listing first, so a kill leaves no half of it."""
    trash = path.parent / f".{path.name}.del-{os.getpid()}"
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
