"""Integrity checksums of v1 payloads: xxh3_64 (xxhash) or crc32 (zlib).

The checksum is written into the header's `__metadata__` as ``"<algo>:<hex digits>"`` and
covers the header bytes, with those digits zeroed, followed by the data region. Costs and
guarantees of each choice: docs/state.md ("Checksums").
"""

from __future__ import annotations

import zlib

from worldflux.core.exceptions import ChecksumError, StateError, StateFormatError

try:  # xxhash is optional at run time: crc32 (zlib) is the fallback
    import xxhash
except ImportError:  # pragma: no cover - exercised only without the dev extra
    xxhash = None  # type: ignore[assignment]

ALGOS = {"xxh3_64": 16, "crc32": 8}  # name -> hex digits


def resolve_algo(checksum: bool | str) -> str:
    """Map `serialize(checksum=...)` to an algorithm name."""
    if checksum is False or checksum == "none":
        return "none"
    if checksum is True:
        return "xxh3_64" if xxhash is not None else "crc32"
    if checksum == "xxh3_64" and xxhash is None:
        raise StateError("State.serialize: checksum='xxh3_64' needs `pip install xxhash`")
    if isinstance(checksum, str) and checksum in ALGOS:
        return checksum
    raise StateError(
        f"State.serialize: checksum must be a bool, 'xxh3_64' or 'crc32', got {checksum!r}"
    )


def placeholder(algo: str) -> str:
    """The checksum value with zeroed digits, as written before hashing."""
    return f"{algo}:" + "0" * ALGOS[algo]


def find_checksum(raw: bytes, value: str) -> int:
    """Offset of the digits of `"checksum":"<value>"` in the header JSON, or raise."""
    at = raw.find(b'"checksum":"' + value.encode() + b'"')
    if at < 0:
        raise StateFormatError("payload: checksum present but not in canonical form")
    return at + len('"checksum":"') + value.index(":") + 1


def digest(algo: str, header: bytes, data: memoryview) -> bytes:
    """Hex digits of the checksum over `header` (digits zeroed) followed by `data`."""
    if algo == "xxh3_64":
        if xxhash is None:
            raise StateError("payload: checksum 'xxh3_64' cannot be verified without xxhash")
        h = xxhash.xxh3_64(header)
        h.update(data)
        return h.hexdigest().encode()
    crc = zlib.crc32(data, zlib.crc32(header))
    return f"{crc:08x}".encode()


def verify(algo: str, pos: int, raw: bytes, data: memoryview) -> None:
    """Raise `ChecksumError` unless the digits at `raw[pos:]` match header and `data`."""
    n = ALGOS[algo]
    zeroed = raw[:pos] + b"0" * n + raw[pos + n :]
    if digest(algo, zeroed, data) != raw[pos : pos + n]:
        raise ChecksumError("payload: checksum mismatch, the bytes were corrupted")
