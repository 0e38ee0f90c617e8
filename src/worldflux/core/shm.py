"""One POSIX shared-memory segment per State, holding the v1 payload; zero-copy attach.

Segment ``/worldflux_<namespace>_<pid>_<n>_<nonce>`` (creator pid first, for `cleanup_namespace`)::

    [0:8)                    u64 generation, bumped by every publish into the segment
    [8:8+size)               the v1 payload, byte for byte what `State.serialize` returns
    [8+size:capacity)        slack (a reused segment may be larger than its payload)

(The generation shares the header's page, so an attach touches a single page.)

Segments are opened with ``shm_open`` and mapped with `mmap` directly: no
`multiprocessing.shared_memory`, so nothing is registered with the resource tracker and a
consumer that exits never unlinks the producer's segment. A descriptor is a small JSON-able
dict. Lifetime rule: tensor views returned by an attach keep their mapping alive; closing only
drops the State's handle, and the kernel unmaps once the last view is garbage collected.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
from itertools import count
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from worldflux.core import checksum as _checksum
from worldflux.core import codec
from worldflux.core.exceptions import SharedMemoryError, StateError, StateFormatError
from worldflux.core.packing import Packing
from worldflux.core.payload import parse_header

try:  # CPython's own binding of shm_open/shm_unlink (what multiprocessing uses underneath)
    import _posixshmem
except ImportError:  # pragma: no cover - non-POSIX
    _posixshmem = None

SHM_DIR = "/dev/shm"
DESCRIPTOR_FORMAT = "worldflux.shm"
# A namespace is 1-64 ASCII letters, digits, '_', '-' or '.'. The name's last three fields
# hold no '_', so a name splits from the right whatever '_'s the namespace holds.
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NAME = re.compile(r"/worldflux_([A-Za-z0-9_.-]{1,64})_([0-9]{1,10})_[0-9]{1,20}_[0-9a-f]{8}")
_KEYS = frozenset(("format", "name", "size", "capacity", "header_len", "generation"))
_GEN = 8  # bytes of the generation counter in front of the payload
_counter = count()


def check_namespace(namespace: Any) -> str:
    """A namespace is 1-64 ASCII letters, digits, '_', '-' or '.' (it becomes part of a file
    name in /dev/shm: no '/', no spaces, nothing a shell or another OS would mangle)."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise SharedMemoryError(
            f"namespace must be 1-64 ASCII letters, digits, '_', '-' or '.', got {namespace!r:.100}"
        )
    return namespace


def _open(name: str, flags: int) -> int:
    if _posixshmem is not None:
        return int(_posixshmem.shm_open(name, flags, mode=0o600))
    return os.open(os.path.join(SHM_DIR, name.lstrip("/")), flags, 0o600)  # pragma: no cover


def unlink_segment(name: str) -> bool:
    """Remove segment `name`; False when it was already gone."""
    try:
        if _posixshmem is not None:
            _posixshmem.shm_unlink(name)
        else:  # pragma: no cover
            os.unlink(os.path.join(SHM_DIR, name.lstrip("/")))
    except FileNotFoundError:
        return False
    return True


def _create(namespace: str, capacity: int) -> tuple[str, mmap.mmap]:
    """A new segment of `capacity` bytes, mapped read-write; the fd is closed at once."""
    name = f"/worldflux_{namespace}_{os.getpid()}_{next(_counter)}_{secrets.token_hex(4)}"
    fd = _open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    try:
        os.ftruncate(fd, capacity)
        mm = mmap.mmap(fd, capacity)
    except OSError as err:
        unlink_segment(name)
        raise SharedMemoryError(f"could not create a {capacity}-byte segment: {err}") from None
    finally:
        os.close(fd)
    return name, mm


def _descriptor(name: str, p: codec.Plan, capacity: int, generation: int) -> dict[str, Any]:
    return {
        "format": DESCRIPTOR_FORMAT,
        "name": name,
        "size": p.total,
        "capacity": capacity,
        "header_len": len(p.header) - 8,
        "generation": generation,
    }


def _write(mm: mmap.mmap, p: codec.Plan, generation: int) -> None:
    codec.encode_into(p, mm, offset=_GEN)
    mm[:_GEN] = generation.to_bytes(_GEN, "little")


def publish(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    namespace: str,
    checksum: bool | str = False,
    packing: Packing | None = None,
) -> dict[str, Any]:
    """Write a State into a fresh segment and return its descriptor (the segment persists)."""
    check_namespace(namespace)
    p = codec.plan(tensors, meta, checksum=checksum, packing=packing)
    capacity = _GEN + p.total
    name, mm = _create(namespace, capacity)
    try:
        _write(mm, p, 0)
    except BaseException as err:
        unlink_segment(name)  # first: a live export (in the traceback) makes close() refuse
        with contextlib.suppress(BufferError):
            mm.close()
        if isinstance(err, StateError) or not isinstance(err, Exception):
            raise
        raise SharedMemoryError(
            f"to_shared_memory: writing the State into segment {name} failed "
            f"({type(err).__name__}: {err}); the segment was removed"
        ) from err
    mm.close()
    return _descriptor(name, p, capacity, 0)


class _Segment:
    """One reusable segment: rewritten in place while payloads fit, replaced when they grow."""

    def __init__(self, namespace: str, headroom: float):
        self.namespace, self.headroom = namespace, headroom
        self.name: str | None = None
        self.capacity = 0
        self.generation = 0
        self._mm: mmap.mmap | None = None
        # The mapping's address and a view of its payload, found once per segment: looking
        # them up again (numpy, ctypes) cost more than a small State's copy.
        self._arr: np.ndarray | None = None
        self._addr = 0
        self._view: memoryview | None = None

    def publish(self, p: codec.Plan) -> dict[str, Any]:
        if self._mm is None or _GEN + p.total > self.capacity:
            self._replace(p.total)
        assert self._mm is not None and self._view is not None and self.name is not None
        self.generation += 1
        codec.write_at(p, self._addr + _GEN, self._view)
        self._mm[:_GEN] = self.generation.to_bytes(_GEN, "little")
        return _descriptor(self.name, p, self.capacity, self.generation)

    def _replace(self, total: int) -> None:
        """Move to a new segment with room for `total` payload bytes plus headroom."""
        self.close(unlink=True)
        capacity = (int((_GEN + total) * self.headroom) + 7) & ~7  # 8-aligned
        self.name, self._mm = _create(self.namespace, capacity)
        self.capacity, self.generation = capacity, 0
        self._arr = np.frombuffer(self._mm, dtype=np.uint8)
        self._addr, self._view = self._arr.ctypes.data, self._arr.data[_GEN:]

    def close(self, unlink: bool) -> None:
        mm, self._mm = self._mm, None
        if self._view is not None:
            self._view.release()  # drop our exports first, or mm.close() refuses
        self._arr = self._view = None
        if mm is not None:
            with contextlib.suppress(BufferError):  # a live export: GC unmaps it later
                mm.close()
        if unlink and self.name is not None:
            unlink_segment(self.name)
        self.name = None


class SegmentPool:
    """Producer side of a stream of States: `slots` segments, each rewritten in place.

    `publish(state, slot=i)` overwrites slot i's previous State (bumping its generation) when
    the payload fits and moves the slot to a larger segment otherwise. The caller must know
    nobody still reads slot i (e.g. the consumer acknowledged it, or copied on attach); an
    attach with an outdated descriptor raises `StateError`, but views taken before a
    republish see the new bytes.
    """

    def __init__(
        self,
        namespace: str,
        slots: int = 1,
        *,
        checksum: bool | str = False,
        headroom: float = 1.25,
    ):
        check_namespace(namespace)
        if type(slots) is not int or slots < 1:
            raise SharedMemoryError(f"SegmentPool: slots must be an int >= 1, got {slots!r}")
        if type(headroom) not in (int, float) or not 1.0 <= headroom <= 16.0:
            raise SharedMemoryError(
                f"SegmentPool: headroom must be a number in [1, 16], got {headroom!r:.50}"
            )
        _checksum.resolve_algo(checksum)  # refuse a bad checksum now, not at the first publish
        self.namespace = namespace
        self.checksum = checksum
        self._slots = [_Segment(namespace, headroom) for _ in range(slots)]

    def publish(self, state: Any, slot: int = 0) -> dict[str, Any]:
        """Write `state` into segment `slot`; returns its descriptor."""
        if type(slot) is not int or not 0 <= slot < len(self._slots):
            raise SharedMemoryError(
                f"SegmentPool.publish: slot must be an int in [0, {len(self._slots)}), got {slot!r}"
            )
        tensors, meta = getattr(state, "tensors", None), getattr(state, "meta", None)
        if not isinstance(tensors, dict) or not isinstance(meta, dict):
            raise SharedMemoryError(
                f"SegmentPool.publish: state must be a State, got {type(state).__name__}"
            )
        packing = getattr(state, "_packing", None)  # a packed State: one copy of its buffer
        p = codec.plan(tensors, meta, checksum=self.checksum, packing=packing)
        return self._slots[slot].publish(p)

    def close(self, unlink: bool = True) -> None:
        """Drop every mapping and (by default) remove the segments; attached views stay valid."""
        for seg in self._slots:
            seg.close(unlink)

    def __enter__(self) -> SegmentPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(unlink=True)


class _Desc(NamedTuple):
    name: str
    size: int
    capacity: int
    header_len: int
    generation: int


def check_descriptor(descriptor: Any, namespace: str | None = None) -> _Desc:
    """Validate a descriptor's shape and name before touching any segment."""
    if not isinstance(descriptor, dict) or descriptor.keys() != _KEYS:
        raise StateFormatError(
            f"descriptor must be a dict with keys {sorted(_KEYS)}, got {descriptor!r:.200}"
        )
    if descriptor["format"] != DESCRIPTOR_FORMAT:
        raise StateFormatError(f"descriptor format must be {DESCRIPTOR_FORMAT!r}")
    name = descriptor["name"]
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or (namespace is not None and match.group(1) != namespace):
        raise StateFormatError(
            f"descriptor name must be a worldflux segment /worldflux_<namespace>_..."
            f"{'' if namespace is None else f' in namespace {namespace!r}'}, got {name!r:.100}"
        )
    nums = [descriptor[k] for k in ("size", "capacity", "header_len", "generation")]
    if not all(type(v) is int and 0 <= v < 2**63 for v in nums):
        raise StateFormatError(f"descriptor sizes must be non-negative ints, got {nums}")
    size, capacity, header_len, _ = nums
    if not 8 + header_len <= size <= capacity - _GEN:
        raise StateFormatError(
            f"descriptor sizes disagree: header_len={header_len}, size={size}, capacity={capacity}"
        )
    return _Desc(name, size, capacity, header_len, nums[3])


class Attachment:
    """The runtime handle of an attached State (kept outside `meta`)."""

    def __init__(self, name: str, mm: mmap.mmap):
        self.name = name
        self._mm: mmap.mmap | None = mm

    def close(self, unlink: bool = False) -> None:
        """Drop the mapping now if no view uses it, else when the last view dies; never crash."""
        mm, self._mm = self._mm, None
        if mm is not None:
            # Views still exporting the buffer make close() refuse: GC unmaps after the last one.
            with contextlib.suppress(BufferError):
                mm.close()
        if unlink:
            unlink_segment(self.name)

    @property
    def closed(self) -> bool:
        return self._mm is None


def _map(d: _Desc) -> mmap.mmap:
    """Open and map the segment, checking its size; the fd is closed before returning."""
    try:
        fd = _open(d.name, os.O_RDWR)
    except FileNotFoundError:
        raise SharedMemoryError(f"segment {d.name} does not exist (unlinked?)") from None
    try:
        actual = os.fstat(fd).st_size
        if actual != d.capacity:
            raise StateFormatError(
                f"descriptor capacity {d.capacity} disagrees with segment {d.name} "
                f"of {actual} bytes"
            )
        return mmap.mmap(fd, d.capacity)
    finally:
        os.close(fd)


def _check_segment(mm: mmap.mmap, d: _Desc) -> None:
    generation = int.from_bytes(mm[:_GEN], "little")
    if generation != d.generation:
        raise StateFormatError(
            f"stale descriptor: segment {d.name} holds generation {generation}, "
            f"descriptor names {d.generation}"
        )
    if int.from_bytes(mm[_GEN : _GEN + 8], "little") != d.header_len:
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
    mm = _map(d)
    try:
        _check_segment(mm, d)
        arr = np.frombuffer(mm, dtype=np.uint8, count=d.size, offset=_GEN)
        layout = parse_header(arr.data)
        if copy:
            tensors, packing = codec.copy_out(layout, arr.ctypes.data)
        else:
            tensors, packing = codec.unpack(layout, arr[layout.data_start :])
        del arr
    except BaseException:
        Attachment(d.name, mm).close()
        raise
    handle = Attachment(d.name, mm)
    if copy:
        handle.close()
        return tensors, layout.meta(), None, packing
    return tensors, layout.meta(), handle, packing


def list_segments(namespace: str) -> list[str]:
    """Names of the existing segments of `namespace` (Linux: read from /dev/shm)."""
    check_namespace(namespace)
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:  # pragma: no cover - no /dev/shm (macOS)
        raise SharedMemoryError(f"cannot list segments: {SHM_DIR} does not exist") from None
    # Matched by the parsed namespace, not a prefix: "a" must not list the segments of "a_b".
    return sorted("/" + e for e in entries if _namespace_of("/" + e) == namespace)


def _namespace_of(name: str) -> str | None:
    match = _NAME.fullmatch(name)
    return None if match is None else match.group(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def cleanup_namespace(namespace: str, *, include_live: bool = False) -> int:
    """Unlink the orphaned segments of `namespace` (creator process gone); returns how many.

    With `include_live=True` every segment of the namespace goes, including those of running
    processes; their current mappings stay valid. PIDs can be reused, so an orphan whose pid
    was taken by a new process survives until `include_live=True`.
    """
    removed = 0
    for name in list_segments(namespace):
        match = _NAME.fullmatch(name)
        assert match is not None
        if (include_live or not _pid_alive(int(match.group(2)))) and unlink_segment(name):
            removed += 1
    return removed
