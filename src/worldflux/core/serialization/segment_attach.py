"""Attaching to a published State: descriptor checks, the mapping, zero-copy views.

Everything that comes from another process is untrusted: the descriptor is checked before
any segment is opened, the segment's size against the descriptor, the generation word
against the descriptor, and the payload goes through the hardened parser of `payload`.

One mapping per segment per process: while a mapping of a segment is alive in this process
(some State's views still use it), attaching to that segment again reuses it instead of
mapping anew. Before reuse, a `stat` of the segment's file checks that the name still
denotes the very file that was mapped (device, inode) at the size the descriptor claims, so
an unlinked, replaced or resized segment is never served from an old mapping. The cache
holds weak references only: it never keeps a mapping (or a segment's memory) alive.
Lifetime rule: tensor views keep their mapping alive; closing only drops the State's
handle, and the mapping goes once the last view is garbage collected.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import weakref
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from worldflux.core.exceptions import SharedMemoryError, StateFormatError
from worldflux.core.serialization.packing import Packing, copy_out, unpack
from worldflux.core.serialization.payload import parse_header, remember
from worldflux.core.serialization.segment import (
    DESCRIPTOR_FORMAT,
    GEN,
    NAME,
    open_segment,
    path,
    unlink_segment,
)

_KEYS = frozenset(("format", "name", "size", "capacity", "header_len", "generation"))
_BOUND = 2**63
_names: dict[str, str] = {}  # well-formed names seen -> their namespace (a regex per attach)


class _Desc(NamedTuple):
    name: str
    size: int
    capacity: int
    header_len: int
    generation: int


def check_descriptor(descriptor: Any, namespace: str | None = None) -> _Desc:
    """Validate a descriptor's shape and name before touching any segment."""
    if type(descriptor) is dict and descriptor.keys() == _KEYS:
        name, size = descriptor["name"], descriptor["size"]
        cap, hlen, gen = descriptor["capacity"], descriptor["header_len"], descriptor["generation"]
        ns = _names.get(name) if type(name) is str else None
        if (  # the common case in one expression; any doubt goes to the checks that explain
            ns is not None
            and (namespace is None or ns == namespace)
            and descriptor["format"] == DESCRIPTOR_FORMAT
            and type(size) is int
            and type(cap) is int
            and type(hlen) is int
            and type(gen) is int
            and hlen >= 0
            and 8 + hlen <= size <= cap - GEN
            and cap < _BOUND
            and 0 <= gen < _BOUND
        ):
            return _Desc(name, size, cap, hlen, gen)
    return _check_slowly(descriptor, namespace)


def _check_slowly(descriptor: Any, namespace: str | None) -> _Desc:
    """`check_descriptor`, one check at a time, raising `StateFormatError` at the first."""
    if not isinstance(descriptor, dict) or descriptor.keys() != _KEYS:
        raise StateFormatError(
            f"descriptor must be a dict with keys {sorted(_KEYS)}, got {descriptor!r:.200}"
        )
    if descriptor["format"] != DESCRIPTOR_FORMAT:
        raise StateFormatError(f"descriptor format must be {DESCRIPTOR_FORMAT!r}")
    name = descriptor["name"]
    match = NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or (namespace is not None and match.group(1) != namespace):
        raise StateFormatError(
            f"descriptor name must be a worldflux segment /worldflux_<namespace>_..."
            f"{'' if namespace is None else f' in namespace {namespace!r}'}, got {name!r:.100}"
        )
    if type(name) is str:  # (not a str subclass, whose hash or equality could lie)
        remember(_names, name, match.group(1), 256)
    nums = [descriptor[k] for k in ("size", "capacity", "header_len", "generation")]
    if not all(type(v) is int and 0 <= v < _BOUND for v in nums):
        raise StateFormatError(f"descriptor sizes must be non-negative ints, got {nums}")
    size, capacity, header_len, generation = nums
    if not 8 + header_len <= size <= capacity - GEN:
        raise StateFormatError(
            f"descriptor sizes disagree: header_len={header_len}, size={size}, capacity={capacity}"
        )
    return _Desc(name, size, capacity, header_len, generation)


class Attachment:
    """The runtime handle of an attached State (kept outside `meta`)."""

    def __init__(self, name: str, mm: mmap.mmap):
        self.name = name
        self._mm: mmap.mmap | None = mm

    def close(self, unlink: bool = False) -> None:
        """Drop the mapping now if no view uses it, else when the last view dies; never crash."""
        mm, self._mm = self._mm, None
        if mm is not None:
            # Views still exporting the buffer (this State's, or those of another State
            # attached to the same segment) make close() refuse: GC unmaps after the last one.
            with contextlib.suppress(BufferError):
                mm.close()
        if unlink:
            unlink_segment(self.name)

    @property
    def closed(self) -> bool:
        return self._mm is None


class _Mapped(NamedTuple):
    """A live mapping of a segment, and the file it mapped."""

    ref: weakref.ref[mmap.mmap]
    path: str
    file: tuple[int, int, int]  # st_dev, st_ino, st_size when mapped


_mapped: dict[str, _Mapped] = {}  # segment name -> its mapping in this process, if alive


def _reuse(d: _Desc) -> tuple[mmap.mmap, np.ndarray] | None:
    """A live mapping of `d`'s segment that still holds, and its payload (uint8), or None."""
    known = _mapped.get(d.name)
    mm = None if known is None else known.ref()
    if known is None or mm is None or mm.closed:
        return None
    try:
        st = os.stat(known.path)
    except FileNotFoundError:
        raise SharedMemoryError(f"segment {d.name} does not exist (unlinked?)") from None
    if (st.st_dev, st.st_ino, st.st_size) != known.file or st.st_size != d.capacity:
        return None  # replaced or resized since: map afresh (and let that path explain)
    try:
        return mm, np.frombuffer(mm, dtype=np.uint8, count=d.size, offset=GEN)
    except ValueError:  # closed by another thread since the check above
        return None


def _map(d: _Desc) -> tuple[mmap.mmap, tuple[int, int, int]]:
    """Open and map the segment, checking its size; the fd is closed before returning.

    Returns the mapping and the (dev, inode, size) of the file mapped.
    """
    try:
        fd = open_segment(d.name, os.O_RDWR)
    except FileNotFoundError:
        raise SharedMemoryError(f"segment {d.name} does not exist (unlinked?)") from None
    try:
        st = os.fstat(fd)
        if st.st_size != d.capacity:
            raise StateFormatError(
                f"descriptor capacity {d.capacity} disagrees with segment {d.name} "
                f"of {st.st_size} bytes"
            )
        return mmap.mmap(fd, d.capacity), (st.st_dev, st.st_ino, st.st_size)
    finally:
        os.close(fd)


def _check_segment(mm: mmap.mmap, d: _Desc) -> None:
    head = mm[: GEN + 8]  # generation word, then the payload's u64 header length
    generation = int.from_bytes(head[:GEN], "little")
    if generation != d.generation:
        raise StateFormatError(
            f"stale descriptor: segment {d.name} holds generation {generation}, "
            f"descriptor names {d.generation}"
        )
    if int.from_bytes(head[GEN:], "little") != d.header_len:
        raise StateFormatError(f"descriptor header_len {d.header_len} disagrees with {d.name}")


def attach(
    descriptor: Any, copy: bool = False, namespace: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any], Attachment | None, Packing | None]:
    """Map a published State: views into the segment, or (`copy=True`) fresh tensors.

    Either way the tensors are views of one buffer, described by the returned `Packing`.
    """
    if type(copy) is not bool:
        raise SharedMemoryError(f"from_shared_memory: copy must be a bool, got {copy!r:.50}")
    d = check_descriptor(descriptor, namespace)
    hit = _reuse(d)
    arr: np.ndarray | None
    if hit is not None:  # another State of this process maps the segment: share its mapping
        (mm, arr), fresh = hit, False
    else:
        (mm, file), arr, fresh = _map(d), None, True
    try:
        _check_segment(mm, d)
        if arr is None:
            arr = np.frombuffer(mm, dtype=np.uint8, count=d.size, offset=GEN)
        layout = parse_header(arr.data)
        if copy:
            tensors, packing = copy_out(layout, arr.ctypes.data)
        else:
            tensors, packing = unpack(layout, arr[layout.data_start :])
        del arr
    except BaseException:
        if fresh:
            Attachment(d.name, mm).close()
        raise
    if copy:
        if fresh:
            Attachment(d.name, mm).close()
        return tensors, layout.meta(), None, packing
    if fresh:
        remember(_mapped, d.name, _Mapped(weakref.ref(mm), path(d.name), file), 256)
    return tensors, layout.meta(), Attachment(d.name, mm), packing
