"""Packed States: tensors that are views of one buffer laid out as a v1 data region.

`deserialize`, `from_shared_memory` and `State.packed()` return such States. Their `Packing`
(a private attribute of the State) remembers the keys, the very tensor objects and the
buffer, so serializing or publishing the State again writes the cached header and copies
the buffer with one memmove: no per-tensor metadata reads, no per-tensor copies.

What is checked on that hot path, and what is not: the State must still hold the same keys,
in the same order, bound to the same tensor objects (one C-level tuple comparison; assigning,
adding or removing a key falls back to the general path). The first fast write per checksum
choice verifies every tensor in full (dtype, shape, contiguity, address inside the buffer).
Changing a packed tensor's metadata in place afterwards (`unsqueeze_`, `resize_`, `set_`,
`requires_grad_`, `.data = ...`) is not seen: the buffer is written with the header of that
verification. Writing *values* into the tensors is what the fast path is for.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldflux.core import checksum as _checksum
from worldflux.core.codec_header import Layout
from worldflux.core.codec_plan import Plan, Template, build_template, meta_text


class Packing:
    """The buffer behind a packed State's tensors, and the headers that describe it."""

    __slots__ = ("keys", "values", "base", "layout", "templates")

    def __init__(self, tensors: dict[str, Tensor], base: Tensor, layout: Layout):
        self.keys = tuple(tensors)
        self.values = tuple(tensors.values())
        self.base = base  # uint8, storage offset 0: the data region, in `layout`'s order
        self.layout = layout
        self.templates: dict[str, Template | None] = {}  # algo -> header (None: not packable)

    def plan(self, tensors: dict[str, Tensor], meta: Any, checksum: bool | str) -> Plan | None:
        """The one-copy write plan, or None when `tensors` are no longer this packing's."""
        if tuple(tensors) != self.keys or not all(map(operator.is_, tensors.values(), self.values)):
            return None
        if self.base.untyped_storage().nbytes() < self.layout.data_len:  # storage shrunk
            return None
        algo = _checksum.resolve_algo(checksum)
        try:
            template = self.templates[algo]
        except KeyError:
            template = self.templates[algo] = self._verified_template(tensors, algo)
        if template is None:
            return None
        return Plan(template, template.header(meta_text(meta)), [], self.base)

    def _verified_template(self, tensors: dict[str, Tensor], algo: str) -> Template | None:
        """The header of the general path, if it describes `base` byte for byte."""
        template = build_template(tensors, algo)
        if template.data_len != self.layout.data_len:
            return None
        entries = {e.name: e for e in self.layout.by_offset}
        addr = self.base.data_ptr()
        for items, *_ in template.groups:
            for i, begin, _n in items:
                key = self.keys[i]
                e, t = entries[key], self.values[i]
                if e.begin != begin or t.dtype != e.dtype or tuple(t.shape) != e.shape:
                    return None
                if t.numel() and (not t.is_contiguous() or t.data_ptr() != addr + begin):
                    return None
                if t.is_neg() or (t.is_complex() and t.is_conj()):  # bits the buffer lacks
                    return None
        return template


_RUN_MIN = 8  # runs this long: one view + unbind/split beats one as_strided per tensor
# Views made below torch's view tracking (no autograd view record, no `_base`): ~20% cheaper
# per tensor, and the buffer stays private. They never overlap, and the buffer itself never
# reaches autograd, so no version-counter sharing is lost that autograd could need.
_untracked = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", contextlib.nullcontext)


def unpack(layout: Layout, data: np.ndarray) -> tuple[dict[str, Tensor], Packing | None]:
    """Views into `data` (a writable uint8 array over the data region), in header order."""
    base = torch.frombuffer(data, dtype=torch.uint8) if data.size else torch.empty(0)
    return _views(layout, base)


def copy_out(layout: Layout, addr: int) -> tuple[dict[str, Tensor], Packing | None]:
    """The one copy of a deserialize: the data region at `addr` into one fresh allocation."""
    base = torch.empty(layout.data_len, dtype=torch.uint8)
    if layout.data_len:
        ctypes.memmove(base.data_ptr(), addr + layout.data_start, layout.data_len)
    return _views(layout, base)


def _views(layout: Layout, base: Tensor) -> tuple[dict[str, Tensor], Packing | None]:
    """The tensors of `layout` over `base` (uint8, storage offset 0), and their packing."""
    with _untracked():
        out, viewed = _group_views(layout, base)
    ordered = out if layout.in_data_order else {name: out[name] for name in layout.names}
    for name in layout.requires_grad:
        ordered[name].requires_grad_(True)
    return ordered, Packing(ordered, base, layout) if viewed else None


def _group_views(layout: Layout, base: Tensor) -> tuple[dict[str, Tensor], bool]:
    """Views in data order, and whether every tensor is one (misaligned ones are copies)."""
    out: dict[str, Tensor] = {}
    viewed = True
    addr = base.data_ptr()
    typed: dict[torch.dtype, Tensor] = {}
    for g in layout.groups:
        size = g.dtype.itemsize
        if g.begin % size or (addr + g.begin) % size:  # misaligned (foreign writer): copy
            viewed = False
            for e in g.entries:
                out[e.name] = base[e.begin : e.end].clone().view(e.dtype).view(e.shape)
        elif len(g.entries) >= _RUN_MIN:
            run = base if g.end - g.begin == base.numel() else base[g.begin : g.end]
            flat = run.view(g.dtype)  # (nbytes,) uint8 -> (numel,) dtype
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
    return out, viewed
