"""`SegmentPool`: the producer side of a stream of States, each slot one reused segment.

A slot is rewritten in place (payload first, then the generation word) while payloads fit,
and moves to a larger segment when one does not. Publishing a packed State (its tensors are
views of one buffer: `State.packed()`) copies that buffer with one memmove.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Any

import numpy as np

from worldflux.core.exceptions import SharedMemoryError
from worldflux.core.serialization import checksum as _checksum
from worldflux.core.serialization import codec
from worldflux.core.serialization.segment import (
    DESCRIPTOR_FORMAT,
    GEN,
    check_namespace,
    create,
    unlink_segment,
)


class _Segment:
    """One reusable segment: rewritten in place while payloads fit, replaced when they grow."""

    def __init__(self, namespace: str, headroom: float):
        self.namespace, self.headroom = namespace, headroom
        self.name: str | None = None
        self.capacity = 0
        self.generation = 0
        self._mm: mmap.mmap | None = None
        # The mapping's address, a view of its payload and of its generation word, found once
        # per segment: looking them up again (numpy, ctypes) cost more than a small State's copy.
        self._arr: np.ndarray | None = None
        self._gen: np.ndarray | None = None
        self._addr = 0
        self._view: memoryview | None = None

    def publish(self, p: codec.Plan) -> dict[str, Any]:
        if self._mm is None or GEN + p.total > self.capacity:
            self._replace(p.total)
        assert self._gen is not None and self._view is not None
        self.generation += 1
        codec.write_at(p, self._addr + GEN, self._view)
        self._gen[0] = self.generation  # after the payload: readers check it against theirs
        return {
            "format": DESCRIPTOR_FORMAT,
            "name": self.name,
            "size": p.total,
            "capacity": self.capacity,
            "header_len": len(p.header) - 8,
            "generation": self.generation,
        }

    def _replace(self, total: int) -> None:
        """Move to a new segment with room for `total` payload bytes plus headroom."""
        self.close(unlink=True)
        capacity = (int((GEN + total) * self.headroom) + 7) & ~7  # 8-aligned
        self.name, self._mm = create(self.namespace, capacity)
        self.capacity, self.generation = capacity, 0
        self._arr = np.frombuffer(self._mm, dtype=np.uint8)
        self._gen = self._arr[:GEN].view("<u8")  # (8,) uint8 -> (1,) little-endian u64
        self._addr, self._view = self._arr.ctypes.data, self._arr.data[GEN:]

    def close(self, unlink: bool) -> None:
        mm, self._mm = self._mm, None
        if self._view is not None:
            self._view.release()  # drop our exports first, or mm.close() refuses
        self._arr = self._gen = self._view = None
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
