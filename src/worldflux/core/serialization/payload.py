"""`parse_header`: where v1 bytes enter - length checks, layout caches, checksum verification.

Validated layouts are remembered (64 of each kind) by their exact header bytes, and by the
header with its `checksum` and `meta` strings blanked (a skeleton). A stream of same-shaped
States whose data (hence checksum) or meta changes from call to call then re-validates only
those two JSON strings, not the whole header. In front of the exact cache, the last header
seen for each (header length, payload length) is compared byte for byte: a memcmp, where a
dict lookup by the bytes would hash them (~1 µs for a 64-key header).

Why the skeleton is sound: in a valid header the first `"meta":"` (or `"checksum":"`) can
only be that entry of `__metadata__` (the one object whose values are strings; a string
cannot hold an unescaped quote). Swapping that JSON string token for another valid one leaves
every other token, and so every other check, unchanged; the new strings are checked here.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from worldflux.core.exceptions import StateError, StateFormatError
from worldflux.core.serialization.checksum import ALGOS, verify
from worldflux.core.serialization.codec_header import (
    FORMAT,
    MAX_META_DEPTH,
    Layout,
    build_layout,
    loads,
)

MAX_HEADER = 100_000_000  # bytes; safetensors uses the same cap
_CACHE_SIZE = 64  # layouts remembered, per cache
_CACHE_MAX_HEADER = 65536  # larger headers are validated every time
_META_KEY = b'"meta":"'
_CHECKSUM_KEY = b'"checksum":"'
_STRING_TOKEN = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\.)*"', re.S)

_exact: dict[tuple[bytes, int], Layout] = {}
_recent: dict[tuple[int, int], tuple[bytes, Layout]] = {}  # (header, payload length) -> last
_skeletons: dict[tuple[bytes, int], Layout] = {}


def clear_caches(*, exact_only: bool = False) -> None:
    """Forget the remembered layouts (all, or only those found by exact bytes): benchmarks
    and tests of the colder paths use it."""
    _recent.clear()
    _exact.clear()
    if not exact_only:
        _skeletons.clear()


def parse_header(mv: memoryview) -> Layout:
    """Validate the payload in `mv` (a flat byte view) and return its layout; StateError only."""
    total = len(mv)
    if total < 8:
        raise StateFormatError(
            f"payload: expected at least 8 bytes (u64 header length), got {total}"
        )
    hlen = int.from_bytes(mv[:8], "little")
    if not 2 <= hlen <= min(MAX_HEADER, total - 8):
        raise StateFormatError(
            f"payload: header length {hlen} must be in [2, {min(MAX_HEADER, total - 8)}] "
            f"for a payload of {total} bytes"
        )
    raw = mv[8 : 8 + hlen].tobytes()
    recent = _recent.get((hlen, total))
    if recent is not None and recent[0] == raw:  # a memcmp: cheaper than hashing `raw`
        layout = recent[1]
    else:
        known = _exact.get((raw, total))
        layout = _layout(raw, total) if known is None else known
        if len(raw) <= _CACHE_MAX_HEADER:
            if known is None:
                remember(_exact, (raw, total), layout)
            remember(_recent, (hlen, total), (raw, layout))
    if layout.checksum_pos >= 0:
        verify(layout.algo, layout.checksum_pos, raw, mv[layout.data_start :])
    return layout


Span = tuple[int, int] | None


def _layout(raw: bytes, total: int) -> Layout:
    """From the skeleton cache when only checksum/meta strings differ, else validated in full."""
    ck, meta = _span(raw, _CHECKSUM_KEY), _span(raw, _META_KEY)
    key = None
    overlap = ck is not None and meta is not None and ck[0] < meta[1] and meta[0] < ck[1]
    if len(raw) <= _CACHE_MAX_HEADER and not overlap:  # (overlap: not a valid header anyway)
        skeleton = raw
        for span in sorted((s for s in (ck, meta) if s is not None), reverse=True):
            skeleton = skeleton[: span[0]] + b'""' + skeleton[span[1] :]
        # The padding spaces at the end vary with the strings' lengths: not part of the key.
        key = (skeleton.rstrip(b" "), total - 8 - len(raw))
        known = _skeletons.get(key)
        if known is not None:
            return _with_strings(known, raw, ck, meta)
    try:
        layout = build_layout(raw, total)
    except (StateError, MemoryError):
        raise
    except Exception as err:  # last resort: every known case has an explicit check
        raise StateFormatError(f"payload: malformed header ({type(err).__name__})") from err
    if key is not None:
        remember(_skeletons, key, layout)
    return layout


def _span(raw: bytes, key: bytes) -> Span:
    """[begin, end) of the JSON string token after the first `key` (`"name":"`), if any."""
    at = raw.find(key)
    if at < 0:
        return None
    match = _STRING_TOKEN.match(raw, at + len(key) - 1)
    return None if match is None else match.span()


def _with_strings(known: Layout, raw: bytes, ck: Span, meta: Span) -> Layout:
    """`known` (validated with other checksum/meta strings) carrying those of `raw`."""
    metadata = dict(known.metadata)
    pos = -1
    if known.checksum_pos >= 0:
        digits = ALGOS[known.algo]
        if ck is None or not re.fullmatch(
            rf'"{known.algo}:[0-9a-f]{{{digits}}}"'.encode(), raw[ck[0] : ck[1]]
        ):
            raise StateFormatError(
                f"payload: malformed checksum {raw[ck[0] : ck[1]] if ck else None!r:.50}"
            )
        pos = ck[0] + len(known.algo) + 2
        metadata["checksum"] = raw[ck[0] + 1 : ck[1] - 1].decode()
    meta_text = known.meta_text
    if meta is not None:
        try:
            value = json.loads(raw[meta[0] : meta[1]])
        except (ValueError, RecursionError) as err:
            raise StateFormatError(f"payload: meta is not a valid JSON string ({err})") from None
        if known.metadata.get("format") == FORMAT:
            if value != "{}" and not isinstance(loads(value, MAX_META_DEPTH, "payload meta"), dict):
                raise StateFormatError("payload: meta must be a JSON object")
            meta_text = value
        metadata["meta"] = value
    return Layout(
        names=known.names,
        by_offset=known.by_offset,
        data_start=8 + len(raw),
        data_len=known.data_len,
        meta_text=meta_text,
        requires_grad=known.requires_grad,
        metadata=metadata,
        algo=known.algo,
        checksum_pos=pos,
        groups=known.groups,
        in_data_order=known.in_data_order,
        data_names=known.data_names,
    )


def remember(cache: dict, key: Any, value: Any, size: int = _CACHE_SIZE) -> None:
    """Insert into a small FIFO cache (safe if another thread evicts concurrently)."""
    if len(cache) >= size:
        with contextlib.suppress(RuntimeError, StopIteration):
            cache.pop(next(iter(cache)), None)
    cache[key] = value
