"""Binary format v1 of a `State`: a safetensors file with worldflux tags in `__metadata__`.

Layout (little endian)::

    [0:8)        u64 N, the header length
    [8:8+N)      JSON header, space-padded so that the data starts 8-aligned:
                 {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}}
    [8+N:end)    tensor bytes, offsets relative to 8+N, no holes, no trailing bytes

Tensors are laid out by decreasing item size so every tensor is aligned to its item size.
`__metadata__` holds `format`, `version`, `integrity`, `meta` (JSON text), `requires_grad`
(JSON list), `device` (source device) and, with integrity on, `checksum`: a hash of the
header (with the checksum digits zeroed) followed by the data.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldflux.core import codec_header as _header
from worldflux.core.codec_header import Entry, Layout, parse_header
from worldflux.core.exceptions import StateDeviceError, StateError, StateFormatError

__all__ = [
    "FORMAT",
    "VERSION",
    "Entry",
    "Layout",
    "Plan",
    "decode",
    "encode",
    "encode_into",
    "parse_header",
    "plan",
    "tensors_from_layout",
]

FORMAT = "worldflux.state"
VERSION = "v1"

_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_PyBytes_AsString = ctypes.pythonapi.PyBytes_AsString
_PyBytes_AsString.restype = ctypes.c_void_p
_PyBytes_AsString.argtypes = [ctypes.py_object]
_memmove = ctypes.memmove


@dataclass(frozen=True)
class Plan:
    """Everything `encode_into` needs: the padded header and where each tensor goes."""

    header: bytes  # 8-byte length prefix + padded JSON, checksum digits zeroed
    items: list[tuple[Tensor, int, int]]  # (tensor, absolute begin, nbytes), in data order
    total: int  # payload size in bytes
    checksum_at: int  # absolute offset of the checksum digits, -1 when integrity is off
    algo: str  # "none", "xxh3_64" or "crc32"


def _source_device(tensors: dict[str, Tensor]) -> str:
    """The one device every tensor lives on ("cpu" for an empty State)."""
    device: torch.device | None = None
    for key, t in tensors.items():
        if not isinstance(key, str):
            raise StateError(f"State.serialize: tensor keys must be str, got {key!r}")
        if not isinstance(t, Tensor):
            raise StateError(
                f"State.serialize: tensors[{key!r}] must be a Tensor, got {type(t).__name__}"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise StateDeviceError(
                f"State.serialize: tensors[{key!r}] is on {t.device}, expected {device} "
                "(all tensors of a State share one device)"
            )
    return "cpu" if device is None else str(device)


def _meta_text(meta: Any) -> str:
    """`meta` as JSON text; refuse what JSON would silently change (tuples, int keys, NaN)."""
    if not isinstance(meta, dict):
        raise StateError(f"State.serialize: meta must be a dict, got {type(meta).__name__}")
    if not meta:
        return "{}"
    try:
        text = json.dumps(meta, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise StateError(f"State.serialize: meta is not JSON-serializable: {err}") from None
    if json.loads(text) != meta:
        raise StateError(
            "State.serialize: meta does not survive a JSON round trip unchanged "
            "(tuples, non-str dict keys?); use lists and str keys"
        )
    return text


def plan(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    checksum: bool | str = False,
    extra: dict[str, str] | None = None,
) -> Plan:
    """Lay out a State: header bytes, tensor positions and total size. Nothing is copied."""
    device = _source_device(tensors)
    algo = _header.resolve_algo(checksum)
    md: dict[str, str] = {"format": FORMAT, "version": VERSION, "integrity": algo}
    if algo != "none":
        md["checksum"] = _header.placeholder(algo)
    md["meta"] = _meta_text(meta)
    md["requires_grad"] = json.dumps([k for k, t in tensors.items() if t.requires_grad])
    md["device"] = device
    if extra:
        md.update(extra)
    names = _header.DTYPE_NAMES
    rows = []
    for key, t in tensors.items():
        name = names.get(t.dtype)
        if name is None:
            raise StateError(
                f"State.serialize: tensors[{key!r}] has dtype {t.dtype}, expected one of "
                f"{sorted(str(d) for d in names)}"
            )
        rows.append((key, t, name, t.element_size(), t.shape))
    # Larger items first keeps every tensor aligned to its item size without holes.
    order = sorted(range(len(rows)), key=lambda i: -rows[i][3])
    spans: list[tuple[int, int]] = [(0, 0)] * len(rows)
    pos = 0
    for i in order:
        nbytes = math.prod(rows[i][4]) * rows[i][3]
        spans[i] = (pos, pos + nbytes)
        pos += nbytes
    header: dict[str, Any] = {"__metadata__": md}
    for (key, _, name, _, shape), (b, e) in zip(rows, spans, strict=True):
        header[key] = {"dtype": name, "shape": list(shape), "data_offsets": [b, e]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    start = 8 + len(raw)
    checksum_at = -1
    if algo != "none":
        checksum_at = 8 + _header.find_checksum(raw, md["checksum"])
    items = [(rows[i][1], start + spans[i][0], spans[i][1] - spans[i][0]) for i in order]
    return Plan(len(raw).to_bytes(8, "little") + raw, items, start + pos, checksum_at, algo)


def _raw_view(addr: int, nbytes: int) -> Tensor:
    """A uint8 tensor over `nbytes` of memory at `addr`; the caller keeps that memory alive."""
    arr = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(addr))
    return torch.from_numpy(arr)


def _copy_tensor(t: Tensor, addr: int, nbytes: int) -> None:
    """Copy `t`'s bytes to `addr`: memmove when contiguous on CPU, else one strided copy_."""
    if nbytes == 0:
        return
    if t.is_cpu and t.is_contiguous():
        _memmove(addr, t.data_ptr(), nbytes)
        return
    # (nbytes,) uint8 -> t.dtype -> t.shape; copy_ gathers strided or device data in one pass.
    dst = _raw_view(addr, nbytes).view(t.dtype).view(t.shape)
    with torch.no_grad():
        dst.copy_(t)


def encode_into(p: Plan, buf: Any) -> int:
    """Write plan `p` at the start of the writable buffer `buf`; returns bytes written."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size < p.total or not arr.flags.writeable:
        raise StateError(
            f"encode_into: buf must be a writable buffer of at least {p.total} bytes, "
            f"got {arr.size} bytes, writable={arr.flags.writeable}"
        )
    _write(p, arr.ctypes.data, arr.data)
    return p.total


def _write(p: Plan, addr: int, view: memoryview) -> None:
    """Copy header and tensors to `addr`, then patch in the checksum (`view` covers `addr`)."""
    _memmove(addr, p.header, len(p.header))
    for t, begin, nbytes in p.items:
        _copy_tensor(t, addr + begin, nbytes)
    if p.checksum_at >= 0:
        digits = _header.digest(p.algo, p.header[8:], view[len(p.header) : p.total])
        _memmove(addr + p.checksum_at, digits, len(digits))


def encode(
    tensors: dict[str, Tensor], meta: dict[str, Any], *, checksum: bool | str = False
) -> bytes:
    """The v1 payload as immutable `bytes`, filled with exactly one copy of each tensor."""
    p = plan(tensors, meta, checksum=checksum)
    # A fresh, not yet shared bytes object is filled in place (what C extensions do): no
    # zero-fill pass, no second copy, and `safetensors.torch.load` accepts the result.
    out = _PyBytes_FromStringAndSize(None, p.total)
    _write(p, _PyBytes_AsString(out), memoryview(out))
    return out


def _group_runs(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Consecutive (in data order) entries of one dtype and shape: each run is one view op."""
    runs: list[list[Entry]] = []
    for e in entries:
        if runs and runs[-1][0].dtype == e.dtype and runs[-1][0].shape == e.shape:
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs


def tensors_from_layout(layout: Layout, base: Tensor) -> dict[str, Tensor]:
    """Views into `base` (uint8, the data region) for every entry, in header order."""
    out: dict[str, Tensor] = {}
    for run in _group_runs(layout.by_offset):
        first = run[0]
        size = first.itemsize
        if first.begin % size:  # misaligned (foreign writer): copy instead of viewing
            for e in run:
                out[e.name] = base[e.begin : e.end].clone().view(e.dtype).view(e.shape)
            continue
        # (k * nbytes,) uint8 -> (k, *shape) dtype -> k views of `shape`
        flat = base[first.begin : run[-1].end].view(first.dtype)
        if len(run) == 1:
            out[first.name] = flat.view(first.shape)
        else:
            for e, t in zip(run, flat.view(len(run), *first.shape).unbind(0), strict=True):
                out[e.name] = t
    ordered = {name: out[name] for name in layout.names}
    for name in layout.requires_grad:
        ordered[name].requires_grad_(True)
    return ordered


def decode(buf: Any, *, copy: bool = True) -> tuple[dict[str, Tensor], dict[str, Any], Layout]:
    """Parse and validate a payload; tensors are fresh (`copy=True`) or views into `buf`."""
    try:
        arr = np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError) as err:
        raise StateError(
            f"State.deserialize: data must be bytes, bytearray or memoryview, got "
            f"{type(buf).__name__} ({err})"
        ) from None
    layout = parse_header(arr.data)
    if copy:
        base = torch.empty(layout.data_len, dtype=torch.uint8)
        if layout.data_len:
            _memmove(base.data_ptr(), arr.ctypes.data + layout.data_start, layout.data_len)
    else:
        if not arr.flags.writeable:
            raise StateError(
                "State.deserialize: copy=False needs a writable buffer (bytearray, writable "
                f"memoryview, mmap), got a read-only {type(buf).__name__}; pass copy=True"
            )
        base = torch.frombuffer(arr, dtype=torch.uint8) if arr.size else torch.empty(0)
        base = base[layout.data_start :]
    return tensors_from_layout(layout, base), layout.meta(), layout


def check_version(version: str, fmt: str) -> None:
    """Refuse any (version, format) pair but ("v1", "binary")."""
    if version != VERSION:
        raise StateFormatError(f"State.serialize: version must be 'v1', got {version!r}")
    if fmt != "binary":
        raise StateFormatError(f"State.serialize: format must be 'binary', got {fmt!r}")
