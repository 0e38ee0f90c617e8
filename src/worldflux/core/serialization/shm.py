"""Shared memory for States: one POSIX segment per State, zero-copy attach.

The front door of the shared-memory modules: `publish` (a State into a fresh segment),
`attach`, `SegmentPool` (reused segments for streams), and segment housekeeping
(`list_segments`, `cleanup_namespace`, `unlink_segment`). The segment layout and naming:
`segment`; attaching: `segment_attach`; reused segments: `segment_pool`.

A descriptor is a small JSON-able dict. Lifetime rule: tensor views returned by an attach keep
their mapping alive; closing only drops the State's handle, and the kernel unmaps once the
last view is garbage collected.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from torch import Tensor

from worldflux.core.exceptions import SharedMemoryError, StateError
from worldflux.core.serialization import codec
from worldflux.core.serialization.packing import Packing
from worldflux.core.serialization.segment import (
    DESCRIPTOR_FORMAT,
    GEN,
    NAME,
    SHM_DIR,
    check_namespace,
    create,
    descriptor,
    namespace_of,
    open_segment,
    unlink_segment,
)
from worldflux.core.serialization.segment_attach import Attachment, attach, check_descriptor
from worldflux.core.serialization.segment_pool import SegmentPool

__all__ = [
    "DESCRIPTOR_FORMAT",
    "SHM_DIR",
    "Attachment",
    "SegmentPool",
    "attach",
    "check_descriptor",
    "check_namespace",
    "cleanup_namespace",
    "create",
    "list_segments",
    "open_segment",
    "publish",
    "unlink_segment",
]


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
    capacity = GEN + p.total
    name, mm = create(namespace, capacity)
    try:
        codec.encode_into(p, mm, offset=GEN)
        mm[:GEN] = (0).to_bytes(GEN, "little")
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
    return descriptor(name, p, capacity, 0)


def list_segments(namespace: str) -> list[str]:
    """Names of the existing segments of `namespace` (Linux: read from /dev/shm)."""
    check_namespace(namespace)
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:  # pragma: no cover - no /dev/shm (macOS)
        raise SharedMemoryError(f"cannot list segments: {SHM_DIR} does not exist") from None
    # Matched by the parsed namespace, not a prefix: "a" must not list the segments of "a_b".
    return sorted("/" + e for e in entries if namespace_of("/" + e) == namespace)


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
        match = NAME.fullmatch(name)
        assert match is not None
        if (include_live or not _pid_alive(int(match.group(2)))) and unlink_segment(name):
            removed += 1
    return removed
