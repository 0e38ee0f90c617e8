"""Save and load a `Replay` as ``.npy`` chunks plus ``replay.json`` (no pickle anywhere).

Format 2 (``worldflux.replay/2``, what `save_replay` writes): every storage array (``obs.<key>``,
``action``, ``reward``, ``is_first``, ``is_terminal``, ``is_last``, ``episode``, and
``policy_version`` when the buffer tracks versions), viewed as ``(num_envs, rows, ...)`` where
``rows`` is the most rows any stream holds, is stored as content-addressed chunks under
``chunks/`` (see `worldflux.data.replay_chunks`: shared with earlier saves by hard links, and
verified on load). ``replay.json`` holds the specs, counters, the sampling RNG state and, under
``arrays``, each array's chunk names.

Format 1 (still loaded): one ``<array>.npy`` per array, shaped ``(num_envs, rows, ...)``; a
disk-backed buffer saved into its own directory still writes this (flush + JSON only, its
memmaps are the data). ``track_versions`` is absent from saves made before that column
existed; they load as untracked buffers. ``replay.json`` is written last (temp file + rename): a
folder without it is an incomplete save. Damaged files raise `SpecError` naming the file.

After `load`, the buffer holds the same rows, counters and RNG state, so it draws the same batches.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import ActionSpec, FieldSpec, ObsSpec
from worldflux.data import replay_chunks as chunks

FORMAT = "worldflux.replay/1"  # flat arrays (and in-place saves of disk-backed buffers)
FORMAT_CHUNKED = "worldflux.replay/2"
META = "replay.json"
_NAME = re.compile(r"[0-9a-f]{32}")


def _spec_json(spec: ObsSpec) -> dict[str, Any]:
    fields = {
        k: {"shape": list(f.shape), "image": f.is_image, "channels_last": f.channels_last}
        for k, f in spec.fields.items()
    }
    return {"is_dict": spec.is_dict, "fields": fields}


def _spec_from_json(data: dict[str, Any]) -> ObsSpec:
    fields = {
        k: FieldSpec(
            tuple(int(s) for s in f["shape"]),
            torch.uint8 if f["image"] else torch.float32,
            bool(f["image"]),
            bool(f["channels_last"]),
        )
        for k, f in data["fields"].items()
    }
    return ObsSpec(fields, bool(data["is_dict"]))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_replay(replay: Any, path: Path, share_with: Sequence[Path] = ()) -> None:
    """Write `replay` to folder `path` (see the module docstring).

    Chunks that one of the saved replay folders `share_with` already holds are hard-linked.
    """
    path.mkdir(parents=True, exist_ok=True)
    in_place = replay.directory is not None and path.resolve() == replay.directory.resolve()
    rows = replay.stream_capacity if in_place else int(replay.counts.max(initial=0))
    meta = {
        "format": FORMAT if in_place else FORMAT_CHUNKED,
        "stream_capacity": replay.stream_capacity,
        "num_envs": replay.num_envs,
        "rows": rows,
        "in_place": in_place,
        "obs_spec": _spec_json(replay.obs_spec),
        "action": replay.action_spec.to_json(),
        "written": replay.written.tolist(),
        "episode": replay.episode.tolist(),
        "expect_first": replay.expect_first.tolist(),
        "track_versions": bool(replay.track_versions),
        "rng": replay.get_state(),
    }
    if in_place:
        replay.flush()
    else:
        meta["arrays"] = _write_chunks(replay, path, rows, share_with)
    _write_json(path / META, meta)
    if not in_place:
        _drop_unlisted(path / chunks.CHUNKS, meta["arrays"])


def _write_chunks(replay: Any, path: Path, rows: int, share_with: Sequence[Path]) -> dict[str, Any]:
    known = chunks.index([path, *share_with])
    out = {}
    for name, (shape, dtype) in replay.layout().items():
        arr = replay.arrays[name]
        # (E*C, ...) -> (E, C, ...) -> first `rows` rows of each stream
        view = arr.reshape(replay.num_envs, replay.stream_capacity, *shape)[:, :rows]
        k = chunks.rows_per_chunk(shape, dtype)
        names = chunks.write_array(view, path / chunks.CHUNKS, k, known)
        out[name] = {"chunk_rows": k, "chunks": names}
    return out


def _drop_unlisted(folder: Path, arrays: dict[str, Any]) -> None:
    """Remove chunks of an earlier save into the same folder that this one no longer lists."""
    listed = {f"{n}.npy" for a in arrays.values() for s in a["chunks"] for n in s}
    for file in folder.iterdir():
        if file.name not in listed:
            file.unlink()


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META
    if not file.is_file():
        raise SpecError(f"path: {path} holds no {META} (not a saved replay, or an incomplete save)")
    try:
        meta = json.loads(file.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a torn or flipped file
        raise SpecError(f"{file}: damaged, not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FORMAT_CHUNKED):
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise SpecError(f"{file}: expected format {FORMAT_CHUNKED!r} or {FORMAT!r}, got {got!r}")
    return meta


def load_replay(path: Path, directory: Path | None = None) -> Any:
    """Read a replay saved by `save_replay`; `directory` makes the new buffer disk-backed there.

    Raises `SpecError` naming the file when one is missing, damaged or does not match.
    """
    meta = _read_meta(path)
    try:
        replay = _empty(meta, directory)
        for key in ("written", "episode", "expect_first"):
            if len(meta[key]) != replay.num_envs:
                raise SpecError(f"{path / META}: {key!r} must list {replay.num_envs} streams")
        replay.written = np.asarray(meta["written"], np.int64)
        replay.episode = np.asarray(meta["episode"], np.int64)
        replay.expect_first = np.asarray(meta["expect_first"], bool)
        replay.set_state(meta["rng"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(f"{path / META}: damaged, bad or missing entry ({e!r})") from e
    for name, (shape, dtype) in replay.layout().items():
        if meta["format"] == FORMAT_CHUNKED:
            arr = _read_chunked(replay, path, meta, name, shape, dtype)
        else:
            arr = _read_flat(replay, path, meta, name, shape, dtype, directory)
        if arr.shape != (replay.capacity, *shape) or arr.dtype != dtype:
            raise SpecError(
                f"{path / name}.npy: expected {(replay.capacity, *shape)} {dtype}, "
                f"got {arr.shape} {arr.dtype}"
            )
        replay.arrays[name] = arr
    # `gather` marks its batches checked: a saved buffer's flags get the check `add` makes
    if np.logical_and(replay.arrays["is_terminal"], ~replay.arrays["is_last"]).any():
        raise SpecError(f"{path}: damaged, a row is_terminal but not is_last")
    return replay


def _empty(meta: dict[str, Any], directory: Path | None) -> Any:
    """A `Replay` with the saved specs and no arrays yet."""
    from worldflux.data.replay import Replay

    # Built field by field (not via __init__) so that an in-place load never truncates its files.
    replay = Replay.__new__(Replay)
    replay.obs_spec = _spec_from_json(meta["obs_spec"])
    replay.action_spec = ActionSpec.from_json(meta["action"], "replay meta: action")
    replay.num_envs, replay.stream_capacity = int(meta["num_envs"]), int(meta["stream_capacity"])
    replay.directory = directory
    replay.track_versions = bool(meta.get("track_versions", False))
    replay.rng = np.random.default_rng(0)
    replay.arrays = {}
    return replay


def _read_chunked(
    replay: Any, path: Path, meta: dict[str, Any], name: str, shape: Any, dtype: np.dtype
) -> np.ndarray:
    arrays, rows = meta.get("arrays"), int(meta["rows"])
    entry = arrays.get(name) if isinstance(arrays, dict) else None
    names = entry.get("chunks") if isinstance(entry, dict) else None
    k = entry.get("chunk_rows") if isinstance(entry, dict) else None
    if (
        not isinstance(names, list)
        or not all(isinstance(s, list) and all(_is_name(n) for n in s) for s in names)
        or not isinstance(k, int)
        or k < 1
        or not 0 <= rows <= replay.stream_capacity
    ):
        raise SpecError(f"{path / META}: damaged, bad chunk list for array {name!r}")
    arr = replay._allocate(name, shape, dtype)
    view = arr.reshape(replay.num_envs, replay.stream_capacity, *shape)  # (E*C, ...) -> (E, C, ...)
    chunks.read_array(path, names, rows, k, dtype, view)
    return arr


def _is_name(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _read_flat(
    replay: Any,
    path: Path,
    meta: dict[str, Any],
    name: str,
    shape: Any,
    dtype: np.dtype,
    directory: Path | None,
) -> np.ndarray:
    num_envs, cap, rows = replay.num_envs, replay.stream_capacity, int(meta["rows"])
    file = path / f"{name}.npy"
    reuse = directory is not None and meta["in_place"] and directory.resolve() == path.resolve()
    src = _open_npy(file, "r+" if reuse else "r")
    if reuse:
        return src
    if meta["in_place"] and src.shape == (num_envs * cap, *shape):
        src = src.reshape(num_envs, cap, *shape)  # (E*C, ...) -> (E, C, ...)
    if src.shape != (num_envs, rows, *shape):
        raise SpecError(f"{file}: expected {(num_envs, rows, *shape)}, got {src.shape}")
    arr = replay._allocate(name, shape, dtype)
    arr.reshape(num_envs, cap, *shape)[:, :rows] = src
    return arr


def _open_npy(file: Path, mode: Literal["r", "r+"]) -> np.ndarray:
    try:
        return np.load(file, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError as e:
        raise SpecError(f"{file}: missing from the saved replay") from e
    except (ValueError, OSError, EOFError, SyntaxError) as e:  # e.g. truncated: mmap length
        raise SpecError(f"{file}: damaged ({' '.join(str(e).split())})") from e
