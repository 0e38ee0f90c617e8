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

Tensors are written as their values: a conjugate or negative view (`c.conj()`,
`c.conj().imag`) is resolved while it is copied, never copied as raw memory.
The header and the place of each tensor are planned in `codec_plan`; parsing is hardened
in `payload` / `codec_header`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldflux.core import checksum as _checksum
from worldflux.core.codec_header import Entry, Layout
from worldflux.core.codec_plan import FORMAT, VERSION, Plan, Run, plan
from worldflux.core.exceptions import StateError, StateFormatError
from worldflux.core.payload import parse_header

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
    "copy_out",
    "tensors_from_layout",
]

_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_PyBytes_AsString = ctypes.pythonapi.PyBytes_AsString
_PyBytes_AsString.restype = ctypes.c_void_p
_PyBytes_AsString.argtypes = [ctypes.py_object]
_memmove = ctypes.memmove

_CAT_MIN = 12  # runs this long are copied by one torch.cat instead of a memmove per tensor


class _Memory:
    """`nbytes` at `addr` as a numpy-readable object (no ctypes array type per size)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, addr: int, nbytes: int):
        self.__array_interface__ = {
            "data": (addr, False),
            "shape": (nbytes,),
            "typestr": "|u1",
            "version": 3,
        }


def _raw_view(addr: int, nbytes: int) -> Tensor:
    """A uint8 tensor over `nbytes` of memory at `addr`; the caller keeps that memory alive."""
    return torch.from_numpy(np.asarray(_Memory(addr, nbytes)))


def _copy_group(values: list[Tensor], run: Run, addr: int, on_cpu: bool) -> None:
    """Copy one run of tensors to its place: memmove each, or one `torch.cat(out=...)`."""
    items, begin, nbytes, dtype, shape = run
    if nbytes == 0:
        return
    if on_cpu and len(items) >= _CAT_MIN:
        # (nbytes,) uint8 -> dtype -> the run's shape; cat gathers strided tensors in one pass
        # and, like copy_, writes the values of conj/neg views (resolving their bits)
        dst = _raw_view(addr + begin, nbytes).view(dtype).view(shape)
        with torch.no_grad():
            torch.cat([values[i] for i, _, _ in items], 0, out=dst)
        return
    complex_ = dtype.is_complex  # only complex tensors can carry the conj bit
    for i, b, n in items:
        t = values[i]
        if n == 0:
            continue
        # Raw memory is only the value when no lazy conj/neg bit is set (a `conj()` view,
        # `c.conj().imag`): such views take the copy_ below, which resolves the bits as it
        # copies (so still one copy). `on_cpu` (every tensor of the template is on the CPU)
        # replaces a per-tensor `t.is_cpu`, so the plain case pays next to nothing for it.
        if on_cpu and t.is_contiguous() and not t.is_neg() and not (complex_ and t.is_conj()):
            _memmove(addr + b, t.data_ptr(), n)
        else:  # strided, on a device, or a conj/neg view: one copy_ straight into the payload
            _raw_view(addr + b, n).view(t.dtype).view(t.shape).copy_(t.detach())


def encode_into(p: Plan, buf: Any, offset: int = 0) -> int:
    """Write plan `p` into the writable buffer `buf` at `offset`; returns bytes written."""
    arr = np.frombuffer(buf, dtype=np.uint8, offset=offset)
    if arr.size < p.total or not arr.flags.writeable:
        raise StateError(
            f"encode_into: buf must be a writable buffer of at least {p.total} bytes, "
            f"got {arr.size} bytes, writable={arr.flags.writeable}"
        )
    _write(p, arr.ctypes.data, arr.data)
    return p.total


def _write(p: Plan, addr: int, view: memoryview) -> None:
    """Copy header and tensors to `addr`, then patch in the checksum (`view` covers `addr`)."""
    tp, start = p.template, len(p.header)
    _memmove(addr, p.header, start)
    for group in tp.groups:
        _copy_group(p.values, group, addr + start, tp.on_cpu)
    if tp.checksum_pos >= 0:
        digits = _checksum.digest(tp.algo, p.header[8:], view[start : p.total])
        _memmove(addr + 8 + tp.checksum_pos, digits, len(digits))


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


_RUN_MIN = 8  # runs this long: one view + unbind/split beats one as_strided per tensor


def tensors_from_layout(layout: Layout, base: Tensor) -> dict[str, Tensor]:
    """Views into `base` (uint8 over the data region, storage offset 0), in header order."""
    out: dict[str, Tensor] = {}
    addr = base.data_ptr()
    typed: dict[torch.dtype, Tensor] = {}
    for g in layout.groups:
        size = g.dtype.itemsize
        if g.begin % size or (addr + g.begin) % size:  # misaligned (foreign writer): copy
            for e in g.entries:
                out[e.name] = base[e.begin : e.end].clone().view(e.dtype).view(e.shape)
        elif len(g.entries) >= _RUN_MIN:
            flat = base[g.begin : g.end].view(g.dtype)  # (nbytes,) uint8 -> (numel,) dtype
            if g.sizes is None:  # (k,) -> k scalars
                parts = flat.unbind(0)
            elif g.equal:  # (k * n0, *rest) -> (k, n0, *rest) -> k views
                parts = flat.view(len(g.entries), *g.entries[0].shape).unbind(0)
            else:
                parts = flat.view(g.shape).split(g.sizes)
            out.update(zip(g.names, parts, strict=True))
        else:
            t = typed.get(g.dtype)
            if t is None:  # the whole region as `dtype` (trailing odd bytes cut off)
                whole = base if base.numel() % size == 0 else base[: base.numel() // size * size]
                t = typed[g.dtype] = whole.view(g.dtype)
            for e in g.entries:
                out[e.name] = t.as_strided(e.shape, e.stride, e.begin // size)
    ordered = out if layout.in_data_order else {name: out[name] for name in layout.names}
    for name in layout.requires_grad:
        ordered[name].requires_grad_(True)
    return ordered


def decode(buf: Any, *, copy: bool = True) -> tuple[dict[str, Tensor], dict[str, Any], Layout]:
    """Parse and validate a payload; tensors are fresh (`copy=True`) or views into `buf`."""
    if type(copy) is not bool:
        raise StateError(f"State.deserialize: copy must be a bool, got {copy!r:.50}")
    if copy and type(buf) is bytes:  # the common case, without a numpy detour
        layout = parse_header(memoryview(buf))
        return copy_out(layout, _PyBytes_AsString(buf)), layout.meta(), layout
    try:
        arr = np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as err:  # BufferError: a strided memoryview
        raise StateError(
            f"State.deserialize: data must be contiguous bytes, bytearray or memoryview, got "
            f"{type(buf).__name__} ({err})"
        ) from None
    layout = parse_header(arr.data)
    if copy:
        return copy_out(layout, arr.ctypes.data), layout.meta(), layout
    if not arr.flags.writeable:
        raise StateError(
            "State.deserialize: copy=False needs a writable buffer (bytearray, writable "
            f"memoryview, mmap), got a read-only {type(buf).__name__}; pass copy=True"
        )
    data = arr[layout.data_start :]
    base = torch.frombuffer(data, dtype=torch.uint8) if data.size else torch.empty(0)
    return tensors_from_layout(layout, base), layout.meta(), layout


def copy_out(layout: Layout, addr: int) -> dict[str, Tensor]:
    """The one copy of a deserialize: the data region at `addr` into one fresh allocation."""
    base = torch.empty(layout.data_len, dtype=torch.uint8)
    if layout.data_len:
        _memmove(base.data_ptr(), addr + layout.data_start, layout.data_len)
    return tensors_from_layout(layout, base)


def check_version(version: str, fmt: str) -> None:
    """Refuse any (version, format) pair but ("v1", "binary")."""
    if version != VERSION:
        raise StateFormatError(f"State.serialize: version must be 'v1', got {version!r}")
    if fmt != "binary":
        raise StateFormatError(f"State.serialize: format must be 'binary', got {fmt!r}")
