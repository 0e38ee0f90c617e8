"""Packed States: tensors that are views of one buffer laid out as a v1 data region.

`deserialize`, `from_shared_memory` and `State.packed()` return such States, made with one
torch call per run of same-dtype tensors (`_views`). Their `Packing` (a private attribute of
the State) remembers the keys, the very tensor objects and the buffer, so serializing or
publishing the State again writes a cached header and copies the buffer once: no per-tensor
metadata reads, no per-tensor copies. The write plans (header bytes, the buffer as a
memoryview) are cached per checksum choice and meta text, and made anew if the buffer's
storage moved (`untyped_storage().resize_`).

What is checked on that hot path, and what is not: the State must still hold the same keys,
in the same order, bound to the same tensor objects (two C-level comparisons, ~1.7 µs for 64
keys; assigning, adding or removing a key falls back to the general path). The first fast
write per checksum
choice verifies every tensor in full (dtype, shape, contiguity, address inside the buffer).
Changing a packed tensor's metadata in place afterwards (`unsqueeze_`, `resize_`, `set_`,
`requires_grad_`, `.data = ...`) is not seen: the buffer is written with the header of that
verification. Writing *values* into the tensors is what the fast path is for.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldflux.core.serialization import checksum as _checksum
from worldflux.core.serialization.codec_header import Group, Layout
from worldflux.core.serialization.codec_plan import Plan, Template, build_template, meta_text


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


def raw_memory(addr: int, nbytes: int) -> np.ndarray:
    """A uint8 array over `nbytes` at `addr`; the caller keeps that memory alive."""
    return np.asarray(_Memory(addr, nbytes))


class Packing:
    """The buffer behind a packed State's tensors, and the headers that describe it."""

    __slots__ = ("keys", "values", "base", "layout", "templates", "_plans", "_addr")

    def __init__(
        self, keys: tuple[str, ...], values: tuple[Tensor, ...], base: Tensor, layout: Layout
    ):
        self.keys = keys  # the State's keys, in order, and the tensor objects bound to them
        self.values = values
        self.base = base  # uint8, storage offset 0: the data region, in `layout`'s order
        self.layout = layout
        self.templates: dict[str, Template | None] = {}  # algo -> header (None: not packable)
        self._plans: dict[tuple[str, str], Plan] = {}  # (algo, meta text) -> plan
        self._addr = -1  # base.data_ptr() when the plans were made

    def plan(self, tensors: dict[str, Tensor], meta: Any, checksum: bool | str) -> Plan | None:
        """The one-copy write plan, or None when `tensors` are no longer this packing's."""
        if tuple(tensors) != self.keys or not all(map(operator.is_, tensors.values(), self.values)):
            return None
        base = self.base
        if base.untyped_storage().nbytes() < self.layout.data_len:  # storage shrunk
            return None
        if base.data_ptr() != self._addr:  # first call, or the storage moved (`resize_`)
            self._plans.clear()  # their memoryviews point at the old address
            self._addr = base.data_ptr()
        key = (_checksum.resolve_algo(checksum), meta_text(meta))
        p = self._plans.get(key)
        if p is None:
            p = self._make_plan(tensors, *key)
        return p

    def _make_plan(self, tensors: dict[str, Tensor], algo: str, text: str) -> Plan | None:
        try:
            template = self.templates[algo]
        except KeyError:
            template = self.templates[algo] = self._verified_template(tensors, algo)
        if template is None:
            return None
        # The buffer as bytes a slice assignment can copy. Not `base.numpy()`: that would make
        # the storage unresizable for the user; `plan` follows the address instead.
        n = self.layout.data_len
        data = raw_memory(self._addr, n).data if n else memoryview(b"")
        if len(self._plans) >= 4:  # a meta that changes every call: keep the last few
            self._plans.clear()
        p = self._plans[algo, text] = Plan(template, template.header(text), [], self.base, data)
        return p

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


_RUN_MIN = 4  # runs this long: one view + split beats one as_strided per tensor
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
    """The tensors of `layout` over `base` (uint8, storage offset 0), and their packing.

    The hot path of every deserialize and attach: one torch call per run of tensors
    (`Layout.groups`) and one `dict(zip(...))`; what is left per tensor is the tensor object
    torch must create (~0.25 µs each).
    """
    with _untracked():
        values, viewed = _data_views(layout, base)
    out = dict(zip(layout.data_names, values, strict=True))  # one view per name
    if not layout.in_data_order:
        out = {name: out[name] for name in layout.names}
        values = list(out.values())
    for name in layout.requires_grad:
        out[name].requires_grad_(True)
    return out, Packing(layout.names, tuple(values), base, layout) if viewed else None


def _data_views(layout: Layout, base: Tensor) -> tuple[Sequence[Tensor], bool]:
    """The tensors in data order, and whether every one is a view (misaligned: copies)."""
    groups = layout.groups
    if len(groups) == 1 and len(groups[0].entries) >= _RUN_MIN:  # one run: no list building
        g = groups[0]
        if not (g.begin % g.dtype.itemsize or base.data_ptr() % g.dtype.itemsize):
            return _run_views(g, base), True
    out: list[Tensor] = []
    viewed = True
    addr = base.data_ptr()
    typed: dict[torch.dtype, Tensor] = {}
    for g in groups:
        size = g.dtype.itemsize
        if g.begin % size or (addr + g.begin) % size:  # misaligned (foreign writer): copy
            viewed = False
            for e in g.entries:
                out.append(base[e.begin : e.end].clone().view(e.dtype).view(e.shape))
        elif len(g.entries) >= _RUN_MIN:
            out.extend(_run_views(g, base))
        else:
            t = typed.get(g.dtype)
            if t is None:  # the whole region as `dtype` (trailing odd bytes cut off)
                whole = base if base.numel() % size == 0 else base[: base.numel() // size * size]
                t = typed[g.dtype] = whole.view(g.dtype)
            for e in g.entries:
                out.append(t.as_strided(e.shape, e.stride, e.begin // size))
    return out, viewed


def _run_views(g: Group, base: Tensor) -> Sequence[Tensor]:
    """The tensors of run `g` (aligned) with one view and one split of `base`."""
    run = base if g.end - g.begin == base.numel() else base[g.begin : g.end]
    flat = run.view(g.dtype)  # (nbytes,) uint8 -> (numel,) dtype
    if g.sizes is None:  # (k,) -> k scalars
        return flat.unbind(0)
    # (sum of dim 0, *rest) -> k views; split_with_sizes makes them faster than unbind
    return flat.view(g.shape).split_with_sizes(g.sizes)
