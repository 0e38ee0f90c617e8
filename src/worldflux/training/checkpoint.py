"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/`` holding

- ``tensors.safetensors``: every tensor and numpy array of the saved tree (weights, optimizer
  moments, the torch RNG state), under a path-like key;
- ``tree.json``: the rest of the tree (counters, config, python/numpy RNG states, env state), with
  ``{"__tensor__": key}`` markers where tensors were;
- optionally ``replay/``, written by the replay buffer's own ``save(dir)``.

It is written to a temporary directory, every file is fsync'ed, and the directory is renamed into
place, so a crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from worldflux.core.exceptions import WorldFluxError

TENSORS_FILE = "tensors.safetensors"
TREE_FILE = "tree.json"
FORMAT_VERSION = 1


class CheckpointError(WorldFluxError, ValueError):
    """A checkpoint directory is missing, incomplete or not in the expected format."""


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


# --- atomic directory writes -------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def save_checkpoint(
    path: str | Path,
    tree: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write `tree` atomically to the directory `path`; `write_extra(tmpdir)` adds files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors: dict[str, Tensor] = {}
    skeleton = pack(tree, tensors)
    save_file(tensors, str(tmp / TENSORS_FILE))
    with open(tmp / TREE_FILE, "w") as f:
        json.dump({"format": FORMAT_VERSION, "tree": skeleton}, f)
    if write_extra is not None:
        write_extra(tmp)
    _fsync_tree(tmp)
    if path.exists():  # overwriting the same step: move the old one aside first
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    else:
        os.rename(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a directory written by `save_checkpoint` back into its tree (no pickle involved)."""
    path = Path(path)
    for name in (TENSORS_FILE, TREE_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint: {path} has no {name}; not a worldflux checkpoint")
    with open(path / TREE_FILE) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"checkpoint: {path / TREE_FILE} format {got!r}, expected 1")
    # Fresh (aligned, writable) copies: compute on tensors backed by the file's buffer can take
    # other kernel paths and differ in the last bits, which would break exact resume.
    tensors = {k: v.clone() for k, v in load_file(str(path / TENSORS_FILE)).items()}
    tree = unpack(doc["tree"], tensors)
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint: {path} does not hold a dict tree")
    return tree


class CheckpointManager:
    """Numbered checkpoints under ``<run_dir>/checkpoints``, keeping the last `keep`."""

    def __init__(self, run_dir: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise CheckpointError(f"keep: expected an int >= 1, got {keep}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.root / f"step_{step:010d}"

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.name.startswith("step_") and p.is_dir()]
        return sorted(p for p in found if (p / TREE_FILE).is_file())

    def latest(self) -> Path | None:
        items = self.list()
        return items[-1] if items else None

    def save(
        self, step: int, tree: dict[str, Any], write_extra: Callable[[Path], None] | None = None
    ) -> Path:
        """Write step `step`, then delete all but the newest `keep` checkpoints."""
        path = save_checkpoint(self.path_for(step), tree, write_extra)
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path
