"""One POSIX shared-memory segment: its name, its layout, and the system calls that make it.

Segment ``/worldflux_<namespace>_<pid>_<n>_<nonce>`` (creator pid first, for cleanup)::

    [0:8)                    u64 generation, bumped by every publish into the segment
    [8:8+size)               the v1 payload, byte for byte what `State.serialize` returns
    [8+size:capacity)        slack (a reused segment may be larger than its payload)

(The generation shares the header's page, so an attach touches a single page.)

Segments are opened with ``shm_open`` and mapped with `mmap` directly: no
`multiprocessing.shared_memory`, so nothing is registered with the resource tracker and a
consumer that exits never unlinks the producer's segment. Writers: `shm.publish` (a fresh
segment) and `segment_pool.SegmentPool` (reused ones); reader: `attach`.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
from itertools import count
from typing import Any

from worldflux.core.exceptions import SharedMemoryError
from worldflux.core.serialization.codec_plan import Plan

try:  # CPython's own binding of shm_open/shm_unlink (what multiprocessing uses underneath)
    import _posixshmem
except ImportError:  # pragma: no cover - non-POSIX
    _posixshmem = None

SHM_DIR = "/dev/shm"
DESCRIPTOR_FORMAT = "worldflux.shm"
GEN = 8  # bytes of the generation counter in front of the payload
# A namespace is 1-64 ASCII letters, digits, '_', '-' or '.'. The name's last three fields
# hold no '_', so a name splits from the right whatever '_'s the namespace holds.
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME = re.compile(r"/worldflux_([A-Za-z0-9_.-]{1,64})_([0-9]{1,10})_[0-9]{1,20}_[0-9a-f]{8}")
_counter = count()


def check_namespace(namespace: Any) -> str:
    """A namespace is 1-64 ASCII letters, digits, '_', '-' or '.' (it becomes part of a file
    name in /dev/shm: no '/', no spaces, nothing a shell or another OS would mangle)."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise SharedMemoryError(
            f"namespace must be 1-64 ASCII letters, digits, '_', '-' or '.', got {namespace!r:.100}"
        )
    return namespace


def namespace_of(name: str) -> str | None:
    """The namespace of a well-formed segment name, else None."""
    match = NAME.fullmatch(name)
    return None if match is None else match.group(1)


def open_segment(name: str, flags: int) -> int:
    """`shm_open` (mode 0600); returns the file descriptor."""
    if _posixshmem is not None:
        return int(_posixshmem.shm_open(name, flags, mode=0o600))
    return os.open(path(name), flags, 0o600)  # pragma: no cover


def path(name: str) -> str:
    """Where segment `name` (``/worldflux_...``) lives in the file system (Linux)."""
    return SHM_DIR + "/" + name.lstrip("/")


def unlink_segment(name: str) -> bool:
    """Remove segment `name`; False when it was already gone."""
    try:
        if _posixshmem is not None:
            _posixshmem.shm_unlink(name)
        else:  # pragma: no cover
            os.unlink(path(name))
    except FileNotFoundError:
        return False
    return True


def create(namespace: str, capacity: int) -> tuple[str, mmap.mmap]:
    """A new segment of `capacity` bytes, mapped read-write; the fd is closed at once."""
    name = f"/worldflux_{namespace}_{os.getpid()}_{next(_counter)}_{secrets.token_hex(4)}"
    fd = open_segment(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    try:
        os.ftruncate(fd, capacity)
        mm = mmap.mmap(fd, capacity)
    except OSError as err:
        unlink_segment(name)
        raise SharedMemoryError(f"could not create a {capacity}-byte segment: {err}") from None
    finally:
        os.close(fd)
    return name, mm


def descriptor(name: str, p: Plan, capacity: int, generation: int) -> dict[str, Any]:
    """The JSON-able descriptor of plan `p` written into segment `name`."""
    return {
        "format": DESCRIPTOR_FORMAT,
        "name": name,
        "size": p.total,
        "capacity": capacity,
        "header_len": len(p.header) - 8,
        "generation": generation,
    }
