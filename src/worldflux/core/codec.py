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
class _Template:
    """The tensor-independent part of a plan, cached per State structure."""

    header: bytes  # 8-byte length prefix + padded JSON, checksum digits zeroed
    groups: tuple[tuple[tuple[int, ...], int, int, torch.dtype, tuple[int, ...]], ...]
    # (tensor indices, absolute begin, nbytes, dtype, shape of the concatenation or () if 0-d)
    total: int  # payload size in bytes
    checksum_at: int  # absolute offset of the checksum digits, -1 when integrity is off
    algo: str  # "none", "xxh3_64" or "crc32"
    on_cpu: bool


@dataclass(frozen=True)
class Plan:
    """A template plus the tensors it lays out: everything `encode_into` needs."""

    template: _Template
    values: list[Tensor]  # the State's tensors, in key order

    @property
    def total(self) -> int:
        return self.template.total

    @property
    def header(self) -> bytes:
        return self.template.header


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


_templates: dict[Any, _Template] = {}
_TEMPLATES = 64  # structures remembered


def plan(tensors: dict[str, Tensor], meta: dict[str, Any], *, checksum: bool | str = False) -> Plan:
    """Lay out a State: header bytes, tensor positions and total size. Nothing is copied."""
    if not isinstance(tensors, dict):
        raise StateError(f"State.serialize: tensors must be a dict, got {type(tensors).__name__}")
    try:
        sig: Any = tuple(
            [(k, t.dtype, t.shape, t.requires_grad, t.device) for k, t in tensors.items()]
        )
    except AttributeError:  # not a Tensor: _build_template names the culprit
        sig = None
    key = (sig, _meta_text(meta), _header.resolve_algo(checksum))
    template = _templates.get(key) if sig is not None else None
    if template is None:
        template = _build_template(tensors, key[1], key[2])
        if len(_templates) >= _TEMPLATES:
            del _templates[next(iter(_templates))]
        _templates[key] = template
    return Plan(template, list(tensors.values()))


def _data_order(rows: list[tuple[str, Tensor, str]]) -> list[int]:
    """Larger items first (alignment without holes), then runs that one `torch.cat` can fill."""

    def rank(i: int) -> tuple[Any, ...]:
        t = rows[i][1]
        return (-t.element_size(), rows[i][2], t.dim() == 0, tuple(t.shape[1:]), i)

    return sorted(range(len(rows)), key=rank)


def _groups(rows: list[tuple[str, Tensor, str]], order: list[int], start: int) -> tuple:
    """Runs of the data order sharing dtype and trailing shape: (indices, begin, nbytes, ...)."""
    groups: list[tuple[tuple[int, ...], int, int, torch.dtype, tuple[int, ...]]] = []
    pos = start
    for i in order:
        t = rows[i][1]
        nbytes = t.numel() * t.element_size()
        if groups and t.dim() > 0:
            idx, b, n, dtype, shape = groups[-1]
            if dtype == t.dtype and shape and shape[1:] == tuple(t.shape[1:]):
                groups[-1] = (idx + (i,), b, n + nbytes, dtype, (shape[0] + t.shape[0], *shape[1:]))
                pos += nbytes
                continue
        groups.append(((i,), pos, nbytes, t.dtype, tuple(t.shape)))
        pos += nbytes
    return tuple(groups)


def _build_template(tensors: dict[str, Tensor], meta_text: str, algo: str) -> _Template:
    device = _source_device(tensors)
    md: dict[str, str] = {"format": FORMAT, "version": VERSION, "integrity": algo}
    if algo != "none":
        md["checksum"] = _header.placeholder(algo)
    md["meta"] = meta_text
    md["requires_grad"] = json.dumps([k for k, t in tensors.items() if t.requires_grad])
    md["device"] = device
    names = _header.DTYPE_NAMES
    rows = []
    for key, t in tensors.items():
        name = names.get(t.dtype)
        if name is None:
            raise StateError(
                f"State.serialize: tensors[{key!r}] has dtype {t.dtype}, expected one of "
                f"{sorted(str(d) for d in names)}"
            )
        rows.append((key, t, name))
    order = _data_order(rows)
    spans: list[list[int]] = [[0, 0]] * len(rows)
    pos = 0
    for i in order:
        nbytes = rows[i][1].numel() * rows[i][1].element_size()
        spans[i] = [pos, pos + nbytes]
        pos += nbytes
    header: dict[str, Any] = {"__metadata__": md}
    for (key, t, name), span in zip(rows, spans, strict=True):
        header[key] = {"dtype": name, "shape": list(t.shape), "data_offsets": span}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    start = 8 + len(raw)
    checksum_at = -1 if algo == "none" else 8 + _header.find_checksum(raw, md["checksum"])
    return _Template(
        len(raw).to_bytes(8, "little") + raw,
        _groups(rows, order, start),
        start + pos,
        checksum_at,
        algo,
        device == "cpu",
    )


def _raw_view(addr: int, nbytes: int) -> Tensor:
    """A uint8 tensor over `nbytes` of memory at `addr`; the caller keeps that memory alive."""
    return torch.frombuffer((ctypes.c_ubyte * nbytes).from_address(addr), dtype=torch.uint8)


def _copy_group(values: list[Tensor], group: tuple, addr: int, on_cpu: bool) -> None:
    """Copy one run of tensors to `addr + begin`: memmove, or one `torch.cat(out=...)`."""
    idx, begin, nbytes, dtype, shape = group
    if nbytes == 0:
        return
    if len(idx) == 1:
        t = values[idx[0]]
        if t.is_cpu and t.is_contiguous():
            _memmove(addr + begin, t.data_ptr(), nbytes)
            return
    # (nbytes,) uint8 -> dtype -> concatenated shape; cat/copy_ gathers strided data in one pass
    dst = _raw_view(addr + begin, nbytes).view(dtype).view(shape)
    with torch.no_grad():
        if len(idx) == 1:
            dst.copy_(values[idx[0]])
        elif on_cpu:
            torch.cat([values[i] for i in idx], 0, out=dst)
        else:  # device tensors: one device-to-host copy each
            for i, part in zip(idx, dst.split([values[i].shape[0] for i in idx]), strict=True):
                part.copy_(values[i])


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
    tp = p.template
    _memmove(addr, tp.header, len(tp.header))
    for group in tp.groups:
        _copy_group(p.values, group, addr, tp.on_cpu)
    if tp.checksum_at >= 0:
        digits = _header.digest(tp.algo, tp.header[8:], view[len(tp.header) : tp.total])
        _memmove(addr + tp.checksum_at, digits, len(digits))


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


def tensors_from_layout(layout: Layout, base: Tensor) -> dict[str, Tensor]:
    """Views into `base` (uint8, the data region) for every entry, in header order.

    Each group of the layout (same dtype and trailing shape) costs one split/unbind.
    """
    out: dict[str, Tensor] = {}
    addr = base.data_ptr()
    for names, begin, end, dtype, shape, sizes in layout.groups:
        raw = base[begin:end]
        if (addr + begin) % dtype.itemsize:  # misaligned (foreign writer): copy, do not view
            raw = raw.clone()
        flat = raw.view(dtype).view(shape)  # (nbytes,) uint8 -> concatenated shape
        if sizes is None:  # a run of 0-d tensors: (k,) -> k scalars
            out.update(zip(names, flat.unbind(0), strict=True))
        elif len(names) == 1:
            out[names[0]] = flat
        else:  # (sum of dim 0, *rest) -> one view per tensor
            out.update(zip(names, flat.split(sizes), strict=True))
    ordered = out if layout.in_data_order else {name: out[name] for name in layout.names}
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
