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
in `payload` / `codec_header`; decoded tensors are views of one buffer (`packing`), which
makes writing such a State again one copy.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldflux.core.exceptions import StateDeviceError, StateError, StateFormatError
from worldflux.core.serialization import checksum as _checksum
from worldflux.core.serialization.codec_header import Entry, Layout
from worldflux.core.serialization.codec_plan import FORMAT, VERSION, Plan, Run, plan
from worldflux.core.serialization.packing import Packing, copy_out, raw_memory, unpack
from worldflux.core.serialization.payload import parse_header

__all__ = [
    "FORMAT",
    "VERSION",
    "Entry",
    "Layout",
    "Plan",
    "decode",
    "encode",
    "encode_into",
    "write_at",
    "pack",
    "parse_header",
    "plan",
    "copy_out",
    "unpack",
]

_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_PyBytes_AsString = ctypes.pythonapi.PyBytes_AsString
_PyBytes_AsString.restype = ctypes.c_void_p
_PyBytes_AsString.argtypes = [ctypes.py_object]
_memmove = ctypes.memmove

_CAT_MIN = 12  # runs this long are copied by one torch.cat instead of a memmove per tensor


def _raw_view(addr: int, nbytes: int) -> Tensor:
    """A uint8 tensor over `nbytes` of memory at `addr`; the caller keeps that memory alive."""
    return torch.from_numpy(raw_memory(addr, nbytes))


def _copy_group(values: list[Tensor], run: Run, addr: int, on_cpu: bool) -> None:
    """Copy one run of tensors to its place: memmove each, or one `torch.cat(out=...)`."""
    items, begin, nbytes, dtype, shape = run
    if nbytes == 0:
        return
    if on_cpu and len(items) >= _CAT_MIN:
        # (nbytes,) uint8 -> dtype -> the run's shape; cat gathers strided tensors in one pass
        # and, like copy_, writes the values of conj/neg views (resolving their bits)
        dst = _raw_view(addr + begin, nbytes).view(dtype).view(shape)
        first, last = items[0][0], items[-1][0]
        if last - first == len(items) - 1 and first < last:  # consecutive keys: one slice
            parts = values[first : last + 1]
        else:
            parts = [values[i] for i, _, _ in items]
        with torch.no_grad():
            torch.cat(parts, 0, out=dst)
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
    write_at(p, arr.ctypes.data, arr.data)
    return p.total


def write_at(p: Plan, addr: int, view: memoryview) -> None:
    """Copy header and tensors to `addr`, then patch in the checksum (`view` covers `addr`).

    A writable `view` takes the header and a packed buffer by slice assignment (a memcpy
    with less call overhead than ctypes'); a read-only one (a fresh `bytes`) through `addr`.
    """
    tp, start = p.template, len(p.header)
    writable = not view.readonly
    if writable:
        view[:start] = p.header
    else:
        _memmove(addr, p.header, start)
    if p.base is not None:  # a packed State: its buffer is the data region
        if writable and p.data is not None:
            view[start : p.total] = p.data
        elif tp.data_len:
            _memmove(addr + start, p.base.data_ptr(), tp.data_len)
    else:
        for group in tp.groups:
            _copy_group(p.values, group, addr + start, tp.on_cpu)
    if tp.checksum_pos >= 0:
        digits = _checksum.digest(tp.algo, p.header[8:], view[start : p.total])
        _memmove(addr + 8 + tp.checksum_pos, digits, len(digits))


def encode(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    checksum: bool | str = False,
    packing: Packing | None = None,
) -> bytes:
    """The v1 payload as immutable `bytes`, filled with exactly one copy of each tensor."""
    p = plan(tensors, meta, checksum=checksum, packing=packing)
    # A fresh, not yet shared bytes object is filled in place (what C extensions do): no
    # zero-fill pass, no second copy, and `safetensors.torch.load` accepts the result.
    out = _PyBytes_FromStringAndSize(None, p.total)
    write_at(p, _PyBytes_AsString(out), memoryview(out))
    return out


def decode(
    buf: Any, *, copy: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any], Packing | None]:
    """Parse and validate a payload; tensors are fresh (`copy=True`) or views into `buf`.

    Either way they are views of one buffer, which the returned `Packing` describes (None
    when a misaligned foreign tensor had to be copied out of it).
    """
    if type(copy) is not bool:
        raise StateError(f"State.deserialize: copy must be a bool, got {copy!r:.50}")
    if copy and type(buf) is bytes:  # the common case, without a numpy detour
        layout = parse_header(memoryview(buf))
        return _with_meta(copy_out(layout, _PyBytes_AsString(buf)), layout)
    try:
        arr = np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as err:  # BufferError: a strided memoryview
        raise StateError(
            f"State.deserialize: data must be contiguous bytes, bytearray or memoryview, got "
            f"{type(buf).__name__} ({err})"
        ) from None
    layout = parse_header(arr.data)
    if copy:
        return _with_meta(copy_out(layout, arr.ctypes.data), layout)
    if not arr.flags.writeable:
        raise StateError(
            "State.deserialize: copy=False needs a writable buffer (bytearray, writable "
            f"memoryview, mmap), got a read-only {type(buf).__name__}; pass copy=True"
        )
    return _with_meta(unpack(layout, arr[layout.data_start :]), layout)


def _with_meta(
    unpacked: tuple[dict[str, Tensor], Packing | None], layout: Layout
) -> tuple[dict[str, Tensor], dict[str, Any], Packing | None]:
    return unpacked[0], layout.meta(), unpacked[1]


def pack(
    tensors: dict[str, Tensor], meta: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Any], Packing | None]:
    """CPU tensors copied into one buffer laid out as a v1 data region; views into it."""
    if not plan(tensors, meta).template.on_cpu:
        raise StateDeviceError("State.packed: the tensors must be on the CPU; use .to('cpu')")
    # Two copies, once: deserialize's buffer is a fresh torch allocation (64-byte aligned,
    # which later memmoves out of it are measurably faster for than a bytearray's 8 bytes).
    return decode(encode(tensors, meta), copy=True)


def check_version(version: str, fmt: str) -> None:
    """Refuse any (version, format) pair but ("v1", "binary")."""
    if version != VERSION:
        raise StateFormatError(f"State.serialize: version must be 'v1', got {version!r}")
    if fmt != "binary":
        raise StateFormatError(f"State.serialize: format must be 'binary', got {fmt!r}")
