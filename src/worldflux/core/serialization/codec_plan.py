"""The write plan of a v1 payload: header bytes and where each tensor goes; nothing copied.

A State's structure (keys, dtypes, shapes, `requires_grad`, device, checksum choice) fixes
everything but `meta`, so its header is built once into a `Template` (64 remembered) and
`meta` is spliced in per call. `codec.encode` / `codec.encode_into` then do the copying.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from worldflux.core.exceptions import StateDeviceError, StateError
from worldflux.core.serialization import checksum as _checksum
from worldflux.core.serialization import codec_header as _header
from worldflux.core.serialization.payload import remember

FORMAT = _header.FORMAT
VERSION = "v1"

Run = tuple[tuple[tuple[int, int, int], ...], int, int, torch.dtype, tuple[int, ...]]
# ((tensor index, begin, nbytes) per tensor, begin, nbytes, dtype, shape of the run);
# offsets are relative to the data region


@dataclass(frozen=True)
class Template:
    """What a State's structure (keys, dtypes, shapes, grads, device) fixes; cached.

    The header JSON is `prefix + <meta as a JSON string> + suffix`, so a meta that changes
    from call to call (a step counter) does not defeat the cache.
    """

    prefix: bytes  # header JSON up to `"meta":`; the checksum digits (zeroed) are in here
    suffix: bytes  # header JSON after the meta string
    groups: tuple[Run, ...]
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

    template: Template
    header: bytes  # 8-byte length + padded JSON, checksum digits zeroed
    values: list[Tensor]  # the State's tensors, in key order (unused with `base`)
    base: Tensor | None = None  # a packed State's buffer: the whole data region, one copy
    data: memoryview | None = None  # `base` as bytes (a slice assignment copies it)

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


def meta_text(meta: Any) -> str:
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
_templates: dict[Any, Template] = {}
_TEMPLATES = 64  # structures remembered


def plan(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    checksum: bool | str = False,
    packing: Any = None,
) -> Plan:
    """Lay out a State: header bytes, tensor positions and total size. Nothing is copied.

    `packing` (a packed State's `packing.Packing`) gives the one-copy plan while it holds.
    """
    if not isinstance(tensors, dict):
        raise StateError(f"State.serialize: tensors must be a dict, got {type(tensors).__name__}")
    if packing is not None:
        packed = packing.plan(tensors, meta, checksum)
        if packed is not None:
            return packed
    try:  # the structure, read at C speed: keys, then (dtype, shape, grad, device) per tensor
        sig: Any = (tuple(tensors), tuple(map(_structure, tensors.values())))
    except (AttributeError, RuntimeError):  # not a Tensor, or nested: build_template says
        sig = None
    text = meta_text(meta)
    key = (sig, _checksum.resolve_algo(checksum))
    template = _templates.get(key) if sig is not None else None
    if template is None:
        template = build_template(tensors, key[1])
        remember(_templates, key, template, _TEMPLATES)
    return Plan(template, template.header(text), list(tensors.values()))


def _data_order(rows: list[tuple[str, Tensor, str]]) -> list[int]:
    """Larger items first (alignment without holes), then runs that one `torch.cat` can fill."""

    def rank(i: int) -> tuple[Any, ...]:
        t = rows[i][1]
        return (-t.element_size(), rows[i][2], t.dim() == 0, tuple(t.shape[1:]), i)

    return sorted(range(len(rows)), key=rank)


def _groups(rows: list[tuple[str, Tensor, str]], order: list[int]) -> tuple:
    """Runs of the data order sharing dtype and trailing shape, with each tensor's place."""
    groups: list[Run] = []
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


def build_template(tensors: dict[str, Tensor], algo: str) -> Template:
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
    return Template(
        raw[:cut], raw[cut + 2 :], _groups(rows, order), pos, checksum_pos, algo, device == "cpu"
    )
