"""Content-addressed replay chunks: how a saved replay is stored once per run, and verified.

A storage array, viewed as ``(num_envs, rows, ...)``, is cut per stream into runs of
`chunk_rows` rows at fixed physical positions, so rows that did not change between two saves
(everything but the newest rows, or the overwritten ones once a ring has wrapped) land in
identical chunks. Each chunk is a ``.npy`` file under ``chunks/`` named by the xxh3_128 of its
dtype, shape and bytes. A save hard-links a chunk that an earlier save (``share_with``) already
holds instead of writing it again, so checkpoints of one run share their replay data: deleting
one only drops its links, never data a newer one needs. A load checks every chunk's bytes
against its name, so a flipped byte is an error naming the file, not a silently different batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xxhash

from worldflux.core.exceptions import SpecError

CHUNKS = "chunks"
CHUNK_BYTES = 4 << 20  # target chunk size: fewer files vs. less rewritten per save


def rows_per_chunk(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Rows per chunk for one array: fixed by its row size only, so saves line up."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


def digest(chunk: np.ndarray) -> str:
    """xxh3_128 hex of a chunk's dtype, shape and bytes (its file name, without ``.npy``)."""
    h = xxhash.xxh3_128(f"{chunk.dtype.str}{chunk.shape}".encode())
    h.update(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def index(saves: Iterable[Path]) -> dict[str, Path]:
    """Chunk file name -> a file holding it, over earlier saves (first listed wins)."""
    found: dict[str, Path] = {}
    for save in saves:
        try:
            names = os.listdir(save / CHUNKS)
        except OSError:
            continue
        for name in names:
            if name.endswith(".npy"):
                found.setdefault(name, save / CHUNKS / name)
    return found


def write_array(view: np.ndarray, out: Path, k: int, known: dict[str, Path]) -> list[list[str]]:
    """Store `view` (num_envs, rows, ...) as chunks of `k` rows in folder `out`.

    Returns the chunk names per stream, in row order.
    """
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for e in range(view.shape[0]):
        stream = []
        for r0 in range(0, view.shape[1], k):
            chunk = np.ascontiguousarray(view[e, r0 : r0 + k])  # (<=k, ...)
            name = digest(chunk)
            _put(chunk, out / f"{name}.npy", known.get(f"{name}.npy"))
            stream.append(name)
        names.append(stream)
    return names


def _put(chunk: np.ndarray, file: Path, source: Path | None) -> None:
    if file.exists():  # the same bytes, already in this save (names are content hashes)
        return
    if source is not None:
        try:
            os.link(source, file)
            return
        except OSError:  # no hard links here (other filesystem, FAT, ...): write a copy
            pass
    write_chunk(chunk, file)


def write_chunk(chunk: np.ndarray, file: Path) -> None:
    # Temp name + rename: a chunk file under its final name is always whole.
    tmp = file.with_name(file.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, chunk, allow_pickle=False)
    os.replace(tmp, file)


def read_array(
    folder: Path,
    names: list[list[str]],
    rows: int,
    k: int,
    dtype: np.dtype,
    out: np.ndarray,
) -> None:
    """Fill rows ``[0, rows)`` of `out` (num_envs, capacity, ...) from verified chunks."""
    per_stream = -(-rows // k)
    if len(names) != out.shape[0] or any(len(s) != per_stream for s in names):
        got = [len(s) for s in names]
        raise SpecError(
            f"{folder}: expected {per_stream} chunks for each of {out.shape[0]} streams, got {got}"
        )
    for e, stream in enumerate(names):
        for i, name in enumerate(stream):
            n = min(k, rows - i * k)
            file = folder / CHUNKS / f"{name}.npy"
            out[e, i * k : i * k + n] = read_chunk(file, (n, *out.shape[2:]), dtype)


def read_chunk(file: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The array in chunk `file`, checked against its name; `SpecError` naming it otherwise."""
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as e:
        raise SpecError(f"{file}: replay chunk is missing") from e
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise SpecError(f"{file}: replay chunk is damaged ({' '.join(str(e).split())})") from e
    if arr.shape != shape or arr.dtype != dtype:
        got = f"{arr.shape} {arr.dtype}"
        raise SpecError(f"{file}: replay chunk is damaged: expected {shape} {dtype}, got {got}")
    if digest(arr) != file.name.removesuffix(".npy"):
        raise SpecError(f"{file}: replay chunk is damaged: its xxh3_128 does not match its name")
    return arr
