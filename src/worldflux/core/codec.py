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
"""

from __future__ import annotations

import ctypes
import json
import operator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from worldflux.core import checksum as _checksum
from worldflux.core import codec_header as _header
from worldflux.core.codec_header import Entry, Layout
from worldflux.core.exceptions import StateDeviceError, StateError, StateFormatError
from worldflux.core.payload import parse_header, remember

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

FORMAT = "worldflux.state"
VERSION = "v1"

_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_PyBytes_AsString = ctypes.pythonapi.PyBytes_AsString
_PyBytes_AsString.restype = ctypes.c_void_p
_PyBytes_AsString.argtypes = [ctypes.py_object]
_memmove = ctypes.memmove


_Run = tuple[tuple[tuple[int, int, int], ...], int, int, torch.dtype, tuple[int, ...]]
# ((tensor index, begin, nbytes) per tensor, begin, nbytes, dtype, shape of the run);
# offsets are relative to the data region
_CAT_MIN = 12  # runs this long are copied by one torch.cat instead of a memmove per tensor


@dataclass(frozen=True)
class _Template:
    """What a State's structure (keys, dtypes, shapes, grads, device) fixes; cached.

    The header JSON is `prefix + <meta as a JSON string> + suffix`, so a meta that changes
    from call to call (a step counter) does not defeat the cache.
    """

    prefix: bytes  # header JSON up to `"meta":`; the checksum digits (zeroed) are in here
    suffix: bytes  # header JSON after the meta string
    groups: tuple[_Run, ...]
    data_len: int
    checksum_pos: int  # offset of the checksum digits in the header JSON, -1 when off
    algo: str  # "none", "xxh3_64" or "crc32"
    on_cpu: bool
    headers: dict[str, bytes] = field(default_factory=dict, compare=False)  # meta -> header

    def header(self, meta_text: str) -> bytes:
        """8-byte length + JSON padded so the data starts 8-aligned (last few memoized)."""
        header = self.headers.get(meta_text)
        if header is None:
            raw = self.prefix + json.dumps(meta_text).encode() + self.suffix
            raw += b" " * (-(8 + len(raw)) % 8)
            header = len(raw).to_bytes(8, "little") + raw
            if len(self.headers) >= 4:
                self.headers.clear()
            self.headers[meta_text] = header
        return header


class Plan(NamedTuple):  # a NamedTuple: built on every serialize, and cheap to build
    """A template, the header for this call's meta and the tensors: what `_write` needs."""

    template: _Template
    header: bytes  # 8-byte length + padded JSON, checksum digits zeroed
    values: list[Tensor]  # the State's tensors, in key order

    @property
    def total(self) -> int:
        return len(self.header) + self.template.data_len


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
        if t.is_nested or t.layout != torch.strided or t.is_meta:
            kind = "nested" if t.is_nested else "meta" if t.is_meta else str(t.layout)
            raise StateError(
                f"State.serialize: tensors[{key!r}] must be a dense (strided) tensor with "
                f"data, got a {kind} tensor"
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
    if text.count("[") + text.count("{") > _header.MAX_META_DEPTH:
        _header.check_depth(text, _header.MAX_META_DEPTH, "State.serialize: meta")
    if json.loads(text) != meta:
        raise StateError(
            "State.serialize: meta does not survive a JSON round trip unchanged "
            "(tuples, non-str dict keys?); use lists and str keys"
        )
    return text


_structure = operator.attrgetter("dtype", "shape", "requires_grad", "device")
_templates: dict[Any, _Template] = {}
_TEMPLATES = 64  # structures remembered


def plan(tensors: dict[str, Tensor], meta: dict[str, Any], *, checksum: bool | str = False) -> Plan:
    """Lay out a State: header bytes, tensor positions and total size. Nothing is copied."""
    if not isinstance(tensors, dict):
        raise StateError(f"State.serialize: tensors must be a dict, got {type(tensors).__name__}")
    try:  # the structure, read at C speed: keys, then (dtype, shape, grad, device) per tensor
        sig: Any = (tuple(tensors), tuple(map(_structure, tensors.values())))
    except (AttributeError, RuntimeError):  # not a Tensor, or nested: _build_template says
        sig = None
    meta_text = _meta_text(meta)
    key = (sig, _checksum.resolve_algo(checksum))
    template = _templates.get(key) if sig is not None else None
    if template is None:
        template = _build_template(tensors, key[1])
        remember(_templates, key, template, _TEMPLATES)
    return Plan(template, template.header(meta_text), list(tensors.values()))


def _data_order(rows: list[tuple[str, Tensor, str]]) -> list[int]:
    """Larger items first (alignment without holes), then runs that one `torch.cat` can fill."""

    def rank(i: int) -> tuple[Any, ...]:
        t = rows[i][1]
        return (-t.element_size(), rows[i][2], t.dim() == 0, tuple(t.shape[1:]), i)

    return sorted(range(len(rows)), key=rank)


def _groups(rows: list[tuple[str, Tensor, str]], order: list[int]) -> tuple:
    """Runs of the data order sharing dtype and trailing shape, with each tensor's place."""
    groups: list[_Run] = []
    pos = 0
    for i in order:
        t = rows[i][1]
        nbytes = t.numel() * t.element_size()
        item = (i, pos, nbytes)
        pos += nbytes
        if groups and t.dim() > 0:
            items, b, n, dtype, shape = groups[-1]
            if dtype == t.dtype and shape and shape[1:] == tuple(t.shape[1:]):
                groups[-1] = (
                    items + (item,),
                    b,
                    n + nbytes,
                    dtype,
                    (shape[0] + t.shape[0], *shape[1:]),
                )
                continue
        groups.append(((item,), item[1], nbytes, t.dtype, tuple(t.shape)))
    return tuple(groups)


def _build_template(tensors: dict[str, Tensor], algo: str) -> _Template:
    device = _source_device(tensors)
    md: dict[str, str] = {"format": FORMAT, "version": VERSION, "integrity": algo}
    if algo != "none":
        md["checksum"] = _checksum.placeholder(algo)
    md["requires_grad"] = json.dumps([k for k, t in tensors.items() if t.requires_grad])
    md["device"] = device
    md["meta"] = ""  # last: the template is split around its value
    names = _header.DTYPE_NAMES
    rows = []
    for key, t in tensors.items():
        name = names.get(t.dtype)
        if name is None:
            raise StateError(
                f"State.serialize: tensors[{key!r}] has dtype {t.dtype}, expected one of "
                f"{sorted(str(d) for d in names)}"
            )
        if key == "__metadata__":
            raise StateError("State.serialize: '__metadata__' is reserved, not a tensor key")
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
    cut = raw.index(b'"meta":""') + len(b'"meta":')  # __metadata__ comes first in the JSON
    checksum_pos = -1 if algo == "none" else _checksum.find_checksum(raw, md["checksum"])
    return _Template(
        raw[:cut], raw[cut + 2 :], _groups(rows, order), pos, checksum_pos, algo, device == "cpu"
    )


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


def _copy_group(values: list[Tensor], run: _Run, addr: int, on_cpu: bool) -> None:
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
