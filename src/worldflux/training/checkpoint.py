"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/`` holding

- ``tensors.safetensors``: every tensor and numpy array of the saved tree (weights, optimizer
  moments, the torch RNG state), under a path-like key;
- ``tree.json``: the rest of the tree (counters, config, python/numpy RNG states, env state), with
  ``{"__tensor__": key}`` markers where tensors were;
- optionally ``replay/``: the replay buffer (``worldflux.data.replay_io``), whose chunks are
  hard links to the chunks earlier checkpoints of the run already hold (stored once per run);
- ``checksums.json``: the xxh3_64 of every other file (see `checkpoint_io`), checked on load.

It is written to a temporary directory, every file is fsync'ed, and the directory is renamed into
place, so a crash leaves either the previous checkpoint or the new one, never half of one. A
failed write (a full disk) removes its temp directory and raises one `CheckpointError`.
`CheckpointManager.load_latest` loads the newest checkpoint that verifies, skipping damaged
ones with a one-line notice. Format-1 checkpoints (no ``checksums.json``) still load.
"""

from __future__ import annotations

import builtins
import json
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from worldflux.core.exceptions import SpecError
from worldflux.training import checkpoint_io as ckio
from worldflux.training.checkpoint_io import CheckpointError

__all__ = ["CheckpointError", "CheckpointManager", "load_checkpoint", "save_checkpoint"]

TENSORS_FILE = "tensors.safetensors"
TREE_FILE = "tree.json"
REPLAY_DIR = "replay"
FORMAT_VERSION = 2  # 2: checksums.json and a chunked replay; 1 (no checksums) still loads
FORMATS = (1, 2)


# --- tree <-> (JSON skeleton, flat tensors) ----------------------------------------------------


def pack(obj: Any, tensors: dict[str, Tensor], prefix: str = "") -> Any:
    """JSON-able skeleton of `obj`; tensors and numpy arrays are moved into `tensors`.

    Supports dict (any str/int keys), list, tuple, Tensor, ndarray, numpy scalars, str, int,
    float, bool and None. Raises `CheckpointError` naming the path of anything else.
    """
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": prefix}
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":  # keep the numpy dtype
        tensors[prefix] = torch.from_numpy(np.asarray(obj).reshape(1).copy())
        return {"__npscalar__": prefix}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise CheckpointError(f"pack: dict key {k!r} at {prefix!r} must be str or int")
            items.append([k, pack(v, tensors, f"{prefix}/{k}")])
        return {"__dict__": items}
    if isinstance(obj, list | tuple):
        packed = [pack(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return packed if isinstance(obj, list) else {"__tuple__": packed}
    raise CheckpointError(
        f"pack: cannot store {type(obj).__name__} at {prefix!r}; expected tensors, arrays, "
        "dicts, lists, tuples or JSON scalars"
    )


def unpack(skel: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of `pack`."""
    if isinstance(skel, list):
        return [unpack(v, tensors) for v in skel]
    if not isinstance(skel, dict):
        return skel
    if "__tensor__" in skel:
        return _lookup(tensors, skel["__tensor__"])
    if "__ndarray__" in skel:
        return _lookup(tensors, skel["__ndarray__"]).numpy()
    if "__npscalar__" in skel:
        return _lookup(tensors, skel["__npscalar__"]).numpy()[0]
    if "__tuple__" in skel:
        return tuple(unpack(v, tensors) for v in skel["__tuple__"])
    if "__dict__" in skel:
        return {k: unpack(v, tensors) for k, v in skel["__dict__"]}
    raise CheckpointError(f"unpack: unexpected JSON object with keys {sorted(skel)}")


def _lookup(tensors: dict[str, Tensor], key: str) -> Tensor:
    if key not in tensors:
        raise CheckpointError(f"checkpoint: tensor {key!r} referenced in {TREE_FILE} is missing")
    return tensors[key]


# --- RNG states --------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states of python `random`, numpy and torch (CPU, plus CUDA if present)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what `capture_rng` returned (after a `pack`/`unpack` round trip)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --- writing -----------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    tree: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
    *,
    replay: Any = None,
    share_with: Sequence[Path] = (),
) -> Path:
    """Write `tree` atomically to the directory `path`; `write_extra(tmpdir)` adds files.

    `replay` (a `Replay`) goes to ``replay/``, hard-linking the chunks that the checkpoints
    `share_with` already hold. Any failure removes the temp directory; an `OSError` (a full
    disk) becomes one `CheckpointError` saying so.
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    skeleton = pack(tree, tensors)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(tmp, tensors, skeleton, write_extra, replay, share_with)
        _publish(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise ckio.write_failed(path, err) from err
        raise
    return path


def _write(
    tmp: Path,
    tensors: dict[str, Tensor],
    skeleton: Any,
    write_extra: Callable[[Path], None] | None,
    replay: Any,
    share_with: Sequence[Path],
) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # Serialized here and written with python I/O: safetensors' save_file ignores a full disk
    # (ENOSPC) and leaves a short file; the checksum comes from the bytes, not a re-read.
    data = safetensors_bytes(tensors)
    with open(tmp / TENSORS_FILE, "wb") as f:
        f.write(data)
    known = {TENSORS_FILE: xxhash.xxh3_64_hexdigest(data)}
    del data
    with open(tmp / TREE_FILE, "w") as f:
        json.dump({"format": FORMAT_VERSION, "tree": skeleton}, f)
    if replay is not None:
        from worldflux.data.replay_io import save_replay

        save_replay(replay, tmp / REPLAY_DIR, [p / REPLAY_DIR for p in share_with])
    if write_extra is not None:
        write_extra(tmp)
    ckio.write_manifest(tmp, known)
    ckio.fsync_tree(tmp)


def _publish(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`; an existing `path` is moved aside first and put back on failure."""
    if not path.exists():
        os.rename(tmp, path)
    else:  # overwriting the same step
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    ckio.fsync_dir(path.parent)


# --- reading -----------------------------------------------------------------------------------


def load_checkpoint(
    path: str | Path, with_replay: bool = False, replay_dir: Path | None = None
) -> dict[str, Any]:
    """Read a directory written by `save_checkpoint` back into its tree (no pickle involved).

    Every file is checked against ``checksums.json`` first. `with_replay` also reads
    ``replay/`` (chunks verified) into ``tree["replay"]`` when the checkpoint has one, into
    memmaps in `replay_dir` when given (a disk-backed replay; else in RAM). A missing,
    damaged or foreign file raises a one-line `CheckpointError` naming it.
    """
    path = Path(path)
    if not (path / TREE_FILE).is_file() and not (path / ckio.MANIFEST).is_file():
        raise CheckpointError(f"checkpoint: {path} has no {TREE_FILE}; not a worldflux checkpoint")
    verified = ckio.verify_manifest(path)
    doc = ckio.read_json(path / TREE_FILE)
    fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
    if fmt not in FORMATS:
        raise CheckpointError(f"checkpoint: {path / TREE_FILE} format {fmt!r}, expected 1 or 2")
    if fmt != 1 and not verified:
        raise ckio.damaged(path / ckio.MANIFEST, f"missing (format {fmt} checkpoints have one)")
    tree = _unpack_tree(path, doc, _read_tensors(path / TENSORS_FILE))
    if with_replay and (path / REPLAY_DIR).is_dir():
        tree["replay"] = _read_replay(path / REPLAY_DIR, replay_dir)
    return tree


def _read_tensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise CheckpointError(f"checkpoint: {file} is missing; not a worldflux checkpoint")
    try:
        loaded = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ckio.damaged(file, ckio.one_line(e)) from e
    # Fresh (aligned, writable) copies: compute on tensors backed by the file's buffer can take
    # other kernel paths and differ in the last bits, which would break exact resume.
    return {k: v.clone() for k, v in loaded.items()}


def _unpack_tree(path: Path, doc: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    try:
        tree = unpack(doc["tree"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise ckio.damaged(path / TREE_FILE, f"unexpected content ({ckio.one_line(e)})") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint: {path} does not hold a dict tree")
    return tree


def _read_replay(folder: Path, replay_dir: Path | None) -> Any:
    from worldflux.data.replay_io import load_replay

    try:
        return load_replay(folder, replay_dir)
    except (SpecError, OSError) as e:
        raise CheckpointError(f"checkpoint: {ckio.one_line(e)}") from e


def notice(message: str) -> None:
    """One line on stderr (a damaged checkpoint skipped, a torn log line dropped)."""
    print(message, file=sys.stderr)


# --- a run's checkpoints -----------------------------------------------------------------------


class CheckpointManager:
    """Numbered checkpoints under ``<run_dir>/checkpoints``, keeping the last `keep`.

    Their replays share chunks (hard links), so `keep` checkpoints of a run cost about one
    replay on disk, not `keep`. Damaged checkpoints found by `load_latest` are left in place
    (a resumed run overwrites them when it reaches their step) but no longer listed.
    """

    def __init__(self, run_dir: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise CheckpointError(f"keep: expected an int >= 1, got {keep}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.damaged: set[Path] = set()
        self.replay_dir: Path | None = None  # where loaded replays go (a disk-backed replay)
        self._swept = False

    def path_for(self, step: int) -> Path:
        return self.root / f"step_{step:010d}"

    def list(self) -> list[Path]:
        """Complete checkpoints not known to be damaged, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.name.startswith("step_") and p.is_dir()]
        return sorted(p for p in found if (p / TREE_FILE).is_file() and p not in self.damaged)

    def latest(self) -> Path | None:
        items = self.list()
        return items[-1] if items else None

    def sweep(self) -> builtins.list[Path]:  # `list` here is the method above
        """Remove temp dirs that writers killed mid-save left behind (see `checkpoint_io`)."""
        self._swept = True
        return ckio.sweep(self.root)

    def save(
        self,
        step: int,
        tree: dict[str, Any],
        write_extra: Callable[[Path], None] | None = None,
        *,
        replay: Any = None,
    ) -> Path:
        """Write step `step` (with `replay`), then delete all but the newest `keep` checkpoints."""
        if not self._swept:
            self.sweep()
        path = save_checkpoint(
            self.path_for(step), tree, write_extra, replay=replay, share_with=self.list()[::-1]
        )
        self.damaged.discard(path)
        for old in self.list()[: -self.keep]:
            ckio.remove_dir(old)
        return path

    def load_latest(
        self, with_replay: bool = False, sweep: bool = False
    ) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that loads and verifies, and its tree (see `load_checkpoint`).

        Each newer damaged one is skipped with one line on stderr (which, why, which one is
        used). `sweep` first removes dead writers' temp dirs (a resuming writer; not a reader,
        which cannot tell a writer in another PID namespace from a dead one).
        """
        if sweep:
            self.sweep()
        found = self.list()
        if not found:
            raise CheckpointError(f"checkpoint: no checkpoint under {self.root}")
        skipped: dict[Path, str] = {}
        for path in reversed(found):
            try:
                tree = load_checkpoint(path, with_replay, self.replay_dir)
            except CheckpointError as err:  # its message names the damaged file
                skipped[path] = ckio.one_line(err)
                continue
            except OSError as err:
                skipped[path] = f"checkpoint: {path} could not be read ({ckio.one_line(err)})"
                continue
            for why in skipped.values():
                notice(f"{why}; using {path} instead")
            self.damaged |= set(skipped)
            return path, tree
        self.damaged |= set(skipped)
        raise CheckpointError(
            f"checkpoint: all {len(found)} checkpoints under {self.root} are damaged; the newest: "
            f"{skipped[found[-1]].removeprefix('checkpoint: ')}"
        )
