"""Every single-bit flip of a serialized header: detected, or harmless, never a silent drop.

Without a checksum, bits inside values the user chose (tensor names, the `meta` text, the
`requires_grad` list, the dims of a zero-size tensor) can flip into other valid values: no
parser can tell `{"step":7}` from `{"step":6}`, which is what `checksum=True` is for. Those
flips must still decode to exactly what the damaged header says. Every other flip must be
detected or give back the original State.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import torch

from worldflux.core.exceptions import StateFormatError
from worldflux.core.serialization import payload
from worldflux.core.serialization.codec_header import DTYPES
from worldflux.core.state import State


def sample() -> State:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "deter": torch.randn(2, 3, generator=g).requires_grad_(),
        "stoch": torch.randn(2, 4, generator=g, dtype=torch.float64),
        "count": torch.arange(2, dtype=torch.int64),
        "half": torch.ones(2, dtype=torch.bfloat16),
        "done": torch.tensor([True, False]),
        "scale": torch.tensor(0.5),
        "empty": torch.zeros(0, 2),
    }
    return State(tensors, {"step": 7, "tags": ["a", {"b": None}], "lr": 0.001})


def flips(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(byte index, payload) for every bit of the length prefix and the header JSON."""
    end = 8 + int.from_bytes(data[:8], "little")
    for i in range(end):
        for bit in range(8):
            buf = bytearray(data)
            buf[i] ^= 1 << bit
            yield i, bytes(buf)


def user_spans(data: bytes, state: State) -> list[tuple[int, int]]:
    """Absolute byte spans of the values a user chose (see the module docstring)."""
    raw = data[: 8 + int.from_bytes(data[:8], "little")]
    spans = [payload._span(raw, b'"meta":"'), payload._span(raw, b'"requires_grad":"')]
    for name, t in state.tensors.items():
        at = raw.index(json.dumps(name).encode() + b':{"dtype"')
        spans.append((at, at + len(name) + 2))
        if t.numel() == 0:
            spans.append(re.compile(rb'"shape":\[[0-9,]*\]').search(raw, at).span())
    return [s for s in spans if s is not None]


def as_described(data: bytes) -> State:
    """What the (damaged) header itself says, decoded by the json module: the reference."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    md = header.pop("__metadata__")
    data_start = 8 + int.from_bytes(data[:8], "little")
    tensors = {}
    for name, spec in header.items():
        b, e = spec["data_offsets"]
        raw = torch.tensor(list(data[data_start + b : data_start + e]), dtype=torch.uint8)
        tensors[name] = raw.view(DTYPES[spec["dtype"]]).view(spec["shape"])
    for name in json.loads(md["requires_grad"]):
        tensors[name].requires_grad_()
    return State(tensors, json.loads(md["meta"]))


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def identical(a: State, b: State) -> bool:
    """Same keys in order, dtypes, shapes, bytes, requires_grad flags and meta."""
    if list(a.tensors) != list(b.tensors) or a.meta != b.meta:
        return False
    for key, x in a.tensors.items():
        y = b.tensors[key]
        if (x.dtype, x.shape, x.requires_grad) != (y.dtype, y.shape, y.requires_grad):
            return False
        if not torch.equal(as_bytes(x), as_bytes(y)):  # bitwise: NaN payloads, -0.0
            return False
    return True


def outcomes(data: bytes) -> Iterator[tuple[int, bytes, State | None]]:
    """Each flip parsed cold and with the caches primed by the original: both must agree."""
    for i, flipped in flips(data):
        results = []
        for warm in (False, True):
            payload.clear_caches()
            if warm:
                State.deserialize(data)
            try:
                results.append(State.deserialize(bytearray(flipped), copy=not warm))
            except StateFormatError:  # the codec's error: anything else fails the test
                results.append(None)
        cold, warm_ = results
        assert (cold is None) == (warm_ is None), i
        assert cold is None or warm_ is None or identical(cold, warm_), i
        yield i, flipped, cold


@pytest.mark.parametrize("checksum", [True, "crc32"])
def test_every_header_bit_flip_with_checksum_is_detected_or_harmless(checksum: object) -> None:
    state = sample()
    data = state.serialize(checksum=checksum)
    for i, _, result in outcomes(data):
        assert result is None or identical(result, state), f"byte {i}: {data[i : i + 1]!r}"


def test_every_header_bit_flip_without_checksum_is_detected_or_faithful() -> None:
    state = sample()
    data = state.serialize()
    spans = user_spans(data, state)
    detected = 0
    for i, flipped, result in outcomes(data):
        if result is None:
            detected += 1
        elif any(b <= i < e for b, e in spans):  # a user's value: decoded as it now reads
            assert identical(result, as_described(flipped)), f"byte {i}"
        else:
            assert identical(result, state), f"byte {i}: {data[i : i + 1]!r} in {data[:i][-30:]!r}"
    assert detected > 0.8 * 8 * (8 + int.from_bytes(data[:8], "little"))
