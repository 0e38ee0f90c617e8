"""Hardened validation of the v1 (safetensors) header JSON, plus the dtype table.

`build_layout` treats its input as hostile: every check happens before any tensor memory is
allocated, and only `StateError` subclasses leave it. Entry point: `payload.parse_header`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from worldflux.core.exceptions import StateError, StateFormatError
from worldflux.core.serialization.checksum import ALGOS as _ALGOS
from worldflux.core.serialization.checksum import find_checksum

MAX_DIMS = 64  # more dimensions than torch handles
MAX_META_DEPTH = 64  # nesting allowed inside the user's meta JSON
MAX_EXTENT = 2**63  # bound on the product of a shape's dims, zeros counted as 1 (torch's int64)
_FAST_BRACKETS = 256  # below this many brackets JSON cannot nest deep enough to matter

FORMAT = "worldflux.state"
# The __metadata__ keys a worldflux writer always writes ("checksum" too, with integrity on),
# and those no other writer uses: a foreign-looking header carrying one is a damaged own one.
_TAGS = frozenset(("format", "version", "integrity", "requires_grad", "device", "meta"))
_OWN_TAGS = frozenset(("integrity", "requires_grad", "meta"))
_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))

_DTYPE_CANDIDATES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in _DTYPE_CANDIDATES.items() if hasattr(torch, attr)
}
DTYPE_NAMES: dict[torch.dtype, str] = {d: n for n, d in DTYPES.items()}

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIR = re.compile(r"\[\]|\{\}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One tensor of a payload: offsets are relative to the data region."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int
    itemsize: int
    stride: tuple[int, ...]  # contiguous strides, in elements


@dataclass(frozen=True, slots=True)
class Group:
    """Consecutive entries (data order) of one dtype and trailing shape, or a run of 0-d ones."""

    entries: tuple[Entry, ...]
    begin: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]  # the run as one tensor: (sum of dim 0, *rest), or (k,) for 0-d
    sizes: tuple[int, ...] | None  # dim-0 sizes (None for a 0-d run)
    equal: bool  # every entry has the same shape (one unbind splits the run)
    names: tuple[str, ...]  # the entries' names


def extent(shape: tuple[int, ...]) -> int:
    """Product of the dims with zeros counted as 1: what torch's size/stride arithmetic reaches."""
    return math.prod(max(d, 1) for d in shape)


def _group(by_offset: list[Entry]) -> tuple[Group, ...]:
    """Merge consecutive entries of one dtype and trailing shape (or consecutive 0-d ones).

    A run's summed extent stays below `MAX_EXTENT`, so its merged shape (and its
    `(k, *shape)` view) fits torch's int64 even when zero-size entries carry huge dims.
    """
    runs: list[list[Entry]] = []
    weight = 0  # summed extent of the current run
    for e in by_offset:
        last = runs[-1][-1] if runs else None
        size = extent(e.shape)
        if (
            last is not None
            and last.dtype == e.dtype
            and len(last.shape) == len(e.shape)
            and (not e.shape or last.shape[1:] == e.shape[1:])
            and weight + size < MAX_EXTENT
        ):
            runs[-1].append(e)
            weight += size
        else:
            runs.append([e])
            weight = size
    groups = []
    for run in runs:
        first = run[0]
        if first.shape:
            shape = (sum(e.shape[0] for e in run), *first.shape[1:])
            sizes: tuple[int, ...] | None = tuple(e.shape[0] for e in run)
        else:
            shape, sizes = (len(run),), None
        equal = all(e.shape == first.shape for e in run)
        names = tuple(e.name for e in run)
        groups.append(
            Group(tuple(run), first.begin, run[-1].end, first.dtype, shape, sizes, equal, names)
        )
    return tuple(groups)


@dataclass(frozen=True)
class Layout:
    """A validated header: entries in header order and in data order, plus worldflux tags."""

    names: tuple[str, ...]  # header order (the State's key order)
    by_offset: tuple[Entry, ...]  # data order
    data_start: int  # absolute offset of the data region
    data_len: int
    meta_text: str  # the State's meta as JSON text ("{}" for foreign files)
    requires_grad: tuple[str, ...]
    metadata: dict[str, str]  # the raw __metadata__
    algo: str  # "none", "xxh3_64" or "crc32"
    checksum_pos: int  # offset of the checksum digits inside the header JSON, -1 if none
    groups: tuple[Group, ...]  # runs of the data order that one view op can split
    in_data_order: bool  # header order == data order (no reordering needed)
    data_names: tuple[str, ...]  # the names in data order

    def meta(self) -> dict[str, Any]:
        """A fresh meta dict (never shared between States)."""
        return {} if self.meta_text == "{}" else json.loads(self.meta_text)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise StateFormatError(f"payload: duplicate JSON key {dup!r}")
    return obj


def _reject_constant(name: str) -> Any:
    raise StateFormatError(f"payload: JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)


def check_depth(text: str, max_depth: int, what: str) -> None:
    """Raise unless JSON `text` nests at most `max_depth` deep (strings ignored)."""
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(max_depth):
        if not skeleton:
            return
        skeleton = _PAIR.sub("", skeleton)
    if skeleton:
        raise StateFormatError(f"{what}: JSON nests deeper than {max_depth} levels")


def loads(text: str, max_depth: int, what: str, strict_depth: bool = True) -> Any:
    """`json.loads` with a depth guard, duplicate-key and NaN rejection; StateError only.

    `strict_depth=False` only guards the parser's recursion (few brackets skip the scan) and
    leaves the exact structure to the caller's validation.
    """
    fast = max_depth if strict_depth else _FAST_BRACKETS
    if text.count("[") + text.count("{") > fast:
        check_depth(text, max_depth, what)
    try:
        return _DECODER.decode(text)
    except StateError:
        raise
    except (ValueError, RecursionError) as err:
        raise StateFormatError(f"{what}: not valid JSON ({err})") from None


def _ints(values: list[Any], name: str, what: str) -> tuple[int, ...]:
    """`values` as a tuple, if every one is an int in [0, 2**63) (bools refused)."""
    for v in values:
        if type(v) is not int or not 0 <= v < 2**63:
            raise StateFormatError(
                f"payload: entry {name!r} {what} must be an int in [0, 2**63), got {v!r:.50}"
            )
    return tuple(values)


def _entry(name: str, spec: Any, data_len: int) -> Entry:
    """Validate one tensor's header entry."""
    if not isinstance(spec, dict) or spec.keys() != _ENTRY_KEYS:
        raise StateFormatError(
            f"payload: entry {name!r} must be an object with keys dtype, shape, data_offsets, "
            f"got {spec!r:.200}"
        )
    dtype = DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dtype is None:
        raise StateFormatError(
            f"payload: entry {name!r} has unknown dtype {spec['dtype']!r:.50}, "
            f"expected one of {sorted(DTYPES)}"
        )
    shape, offsets = spec["shape"], spec["data_offsets"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise StateFormatError(
            f"payload: entry {name!r} shape must be a list of <= {MAX_DIMS} ints, "
            f"got {shape!r:.100}"
        )
    dims = _ints(shape, name, "dimension")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise StateFormatError(
            f"payload: entry {name!r} data_offsets must be [begin, end], got {offsets!r:.100}"
        )
    begin, end = _ints(offsets, name, "data offset")
    if not begin <= end <= data_len:
        raise StateFormatError(
            f"payload: entry {name!r} data_offsets [{begin}, {end}] outside the data region "
            f"of {data_len} bytes"
        )
    if extent(dims) >= MAX_EXTENT:  # a zero dim hides the others from prod(dims)
        raise StateFormatError(
            f"payload: entry {name!r} shape {list(dims)} is too large: the product of its "
            f"dimensions (zeros counted as 1) must be < 2**63, got {extent(dims)}"
        )
    itemsize = dtype.itemsize
    numel = math.prod(dims)
    if numel * itemsize != end - begin:
        raise StateFormatError(
            f"payload: entry {name!r} shape {list(dims)} of {spec['dtype']} needs "
            f"{numel * itemsize} bytes, data_offsets give {end - begin}"
        )
    return Entry(name, dtype, dims, begin, end, itemsize, _contiguous_strides(dims))


def _contiguous_strides(dims: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(dims):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


def _check_coverage(by_offset: list[Entry], data_len: int) -> None:
    """Tensors must tile the data region exactly: no overlap, no hole, nothing after."""
    pos = 0
    for e in by_offset:
        if e.begin != pos:
            kind = "overlaps the previous tensor" if e.begin < pos else "leaves a hole before it"
            raise StateFormatError(f"payload: entry {e.name!r} at byte {e.begin} {kind}")
        pos = e.end
    if pos != data_len:
        raise StateFormatError(
            f"payload: tensors cover {pos} bytes but the data region holds {data_len} "
            "(truncated or trailing bytes)"
        )


def _metadata(md: Any) -> dict[str, str]:
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise StateFormatError(f"payload: __metadata__ must map str to str, got {md!r:.200}")
    return md


def _tags(md: dict[str, str], raw: bytes) -> tuple[str, str, int]:
    """(algo, meta_text, checksum_pos) from the worldflux tags, checked for consistency."""
    ours = md.get("format") == FORMAT
    algo = md.get("integrity", "none") if ours else "none"
    if ours and md.get("version") != "v1":
        raise StateFormatError(f"payload: unsupported version {md.get('version')!r:.50}")
    if ours and (algo not in _ALGOS and algo != "none" or "integrity" not in md):
        raise StateFormatError(f"payload: unknown integrity {md.get('integrity')!r:.50}")
    value = md.get("checksum")
    if value is None and algo != "none":
        raise StateFormatError(f"payload: integrity {algo!r} declared but no checksum")
    pos = -1
    if value is not None:  # a checksum is verified whenever present, whatever the format
        algo, _, digits = value.partition(":")
        if algo not in _ALGOS or not re.fullmatch(f"[0-9a-f]{{{_ALGOS[algo]}}}", digits):
            raise StateFormatError(f"payload: malformed checksum {value!r:.50}")
        if ours and md.get("integrity") != algo:
            raise StateFormatError("payload: checksum algorithm disagrees with integrity tag")
        pos = find_checksum(raw, value)
    _check_tag_set(md, ours, algo)
    meta_text = md.get("meta", "{}") if ours else "{}"
    return algo, meta_text, pos


def _check_tag_set(md: dict[str, str], ours: bool, algo: str) -> None:
    """Refuse a damaged tag set: one flipped bit in the `format` tag, or in a key such as
    `meta`, would otherwise load the payload as a foreign file and drop `meta` and grads."""
    if ours:
        expected = _TAGS | {"checksum"} if algo != "none" else _TAGS
        if md.keys() != expected:
            raise StateFormatError(
                f"payload: a worldflux header's __metadata__ must hold exactly the keys "
                f"{sorted(expected)}, got {sorted(md)!r:.200} (damaged?)"
            )
    elif not _OWN_TAGS.isdisjoint(md):
        raise StateFormatError(
            f"payload: __metadata__ carries worldflux fields {sorted(_OWN_TAGS & md.keys())} "
            f"but its format tag is {md.get('format')!r:.50}, expected {FORMAT!r} (damaged?)"
        )


def build_layout(raw: bytes, total: int) -> Layout:
    """Validate header JSON `raw` of a payload of `total` bytes (no checksum check here)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StateFormatError(f"payload: header is not UTF-8 ({err.reason})") from None
    if not text.startswith("{"):
        raise StateFormatError("payload: header must be a JSON object starting with '{'")
    obj = loads(text, 3, "payload header", strict_depth=False)
    md = _metadata(obj.pop("__metadata__", {}))
    data_start = 8 + len(raw)
    data_len = total - data_start
    entries = [_entry(name, spec, data_len) for name, spec in obj.items()]
    by_offset = sorted(entries, key=lambda e: (e.begin, e.end))
    _check_coverage(by_offset, data_len)
    algo, meta_text, pos = _tags(md, raw)
    if not isinstance(loads(meta_text, MAX_META_DEPTH, "payload meta"), dict):
        raise StateFormatError("payload: meta must be a JSON object")
    grads = loads(md.get("requires_grad", "[]"), 1, "payload requires_grad")
    dtypes = {e.name: e.dtype for e in entries}
    if not isinstance(grads, list) or not all(
        isinstance(g, str) and g in dtypes and (dtypes[g].is_floating_point or dtypes[g].is_complex)
        for g in grads
    ):
        raise StateFormatError(
            f"payload: requires_grad must list floating tensors of the payload, got {grads!r:.100}"
        )
    names = tuple(obj)
    data_names = tuple(e.name for e in by_offset)
    return Layout(
        names,
        tuple(by_offset),
        data_start,
        data_len,
        meta_text,
        tuple(grads),
        md,
        algo,
        pos,
        _group(by_offset),
        names == data_names,
        data_names,
    )
