"""`State.deserialize` as a parser of hostile bytes: only StateError may escape, memory bounded."""

from __future__ import annotations

import contextlib
import json
import random
import re
import struct
import tracemalloc

import pytest
import torch

from worldflux.core.exceptions import ChecksumError, StateError, StateFormatError
from worldflux.core.serialization import payload as payload_mod
from worldflux.core.state import State

FUZZ_CASES = 12_000


def payload(header: str | bytes | dict, data: bytes = b"") -> bytes:
    """Hand-made v1 bytes: u64 length + header JSON + data."""
    if isinstance(header, dict):
        header = json.dumps(header)
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def seeds() -> list[bytes]:
    """Small valid payloads covering dtypes, 0-d, zero-size, meta and checksums."""
    g = torch.Generator().manual_seed(0)
    a = State({"x": torch.randn(2, 3, generator=g), "i": torch.arange(3, dtype=torch.int16)})
    b = State(
        {"s": torch.tensor(1.5), "e": torch.zeros(0, 2), "m": torch.tensor([True, False])},
        {"step": 7, "tags": ["a", {"b": None}]},
    )
    c = State({f"k{i}": torch.full((1, 2), float(i), dtype=torch.bfloat16) for i in range(4)})
    return [
        a.serialize(),
        a.serialize(checksum=True),
        b.serialize(),
        b.serialize(checksum="crc32"),
        c.serialize(),
    ]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One random corruption: bit flips, byte writes, truncation, extension, a splice, header
    edits, or a shape with a zero dim hiding huge ones (prod(dims) is 0 whatever they are).

    Any bytes are accepted, the output of earlier mutations included (empty, a few bytes, a
    length field of 2**64 - 1): only the parser under test may raise, never the mutator.
    """
    buf = bytearray(data)
    kind = rng.randrange(8) if len(buf) > 8 else rng.choice((3, 4, 5))  # room for edits
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 2:
        del buf[rng.randrange(len(buf)) :]
    elif kind == 3:
        buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 4:
        other = rng.choice(pool)
        cut = rng.randrange(min(len(buf), len(other)) + 1)
        buf = buf[:cut] + bytearray(other[cut:])
    elif kind == 5:  # rewrite the header length
        buf[:8] = struct.pack(
            "<Q", rng.choice([0, 1, 2, len(buf), 2**63, 2**64 - 1, rng.randrange(len(buf) + 1)])
        )
    elif kind == 6:  # insert or delete a run inside the header
        i = rng.randrange(8, len(buf))
        if rng.random() < 0.5:
            del buf[i : i + rng.randint(1, 8)]
        else:
            buf[i:i] = rng.choice([b"{", b"[", b'"', b",", b"]", b"}", b"0", b" ", b"\\"])
    else:  # rewrite one shape as zero + huge dims, keeping the header length right
        hlen = int.from_bytes(buf[:8], "little")
        shapes = list(re.finditer(rb'"shape":\[[0-9,]*\]', bytes(buf[8 : 8 + hlen])))
        if shapes:
            dims = [rng.choice([1, 3, 2**31, 2**40, 2**62, 2**63 - 1]) for _ in range(3)]
            dims[rng.randrange(3)] = 0
            new = b'"shape":' + json.dumps(dims[rng.randrange(2) :]).replace(" ", "").encode()
            b, e = rng.choice(shapes).span()
            buf[8 + b : 8 + e] = new
            # (an earlier mutation may have left hlen near 2**64: the field wraps, as in C)
            buf[:8] = struct.pack("<Q", (hlen + len(new) - (e - b)) % 2**64)
    return bytes(buf)


def test_mutation_fuzz_only_state_error_escapes() -> None:
    rng = random.Random(1234)
    pool = seeds()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(FUZZ_CASES):
        data = mutate(rng, rng.choice(pool), pool)
        try:
            State.deserialize(data)
            outcomes["ok"] += 1
        except StateError:
            outcomes["error"] += 1
    assert outcomes["error"] > FUZZ_CASES // 2  # the fuzzer really produces bad payloads


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_the_mutator_never_crashes_on_its_own_output(seed: int) -> None:
    """Chains of mutations (as benchmarks/fuzz_state.py stacks them), from any bytes."""
    rng = random.Random(seed)
    pool = seeds()
    for start in (b"", b"\x00", bytes(8), b"\xff" * 8 + b"{}", rng.choice(pool)):
        data = start
        for _ in range(400):
            data = mutate(rng, data, pool)
            if len(data) > 4096:  # (extensions add up; keep the chain cheap)
                data = data[:4096]
        assert isinstance(data, bytes)


def test_checksummed_payloads_never_load_corrupted() -> None:
    rng = random.Random(99)
    good = seeds()[1]
    for _ in range(2000):
        bad = bytearray(good)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        with pytest.raises(StateError):
            State.deserialize(bytes(bad))


def test_every_truncation_fails() -> None:
    data = seeds()[2]
    for n in range(len(data)):
        with pytest.raises(StateError):
            State.deserialize(data[:n])
    with pytest.raises(StateFormatError, match="truncated or trailing"):
        State.deserialize(data + b"\x00")


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
ZERO = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}  # a zero-size tensor


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        (b"\xff\xfe{}", b"", "not UTF-8"),
        ("[1, 2]", b"", "JSON object"),
        ('"str"', b"", "JSON object"),
        ('{"a": ', b"", "not valid JSON"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, b"", "nests deeper"),
        ("[" * 100_000, b"", "JSON object"),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", b"", "nests deeper"),
        ({"a": ENTRY | {"dtype": "F128"}}, bytes(8), "unknown dtype"),
        ({"a": ENTRY | {"dtype": 3}}, bytes(8), "unknown dtype"),
        ({"a": ENTRY | {"shape": [-2]}}, bytes(8), r"int in \[0, 2\*\*63\)"),
        ({"a": ENTRY | {"shape": [2.0]}}, bytes(8), "int in"),
        ({"a": ENTRY | {"shape": [True, 2]}}, bytes(8), "int in"),
        ({"a": ENTRY | {"shape": [2**64]}}, bytes(8), "int in"),
        ({"a": ENTRY | {"shape": [2**31] * 3}}, bytes(8), "too large"),
        ({"a": ZERO | {"shape": [0, 2**40, 2**40]}}, b"", "too large"),
        ({"a": ZERO | {"shape": [2**40, 2**40, 0]}}, b"", "too large"),
        ({"a": ZERO | {"shape": [2**62, 2, 0]}}, b"", "too large"),
        ({"a": ENTRY | {"shape": [1] * 65}}, bytes(8), "<= 64 ints"),
        ({"a": ENTRY | {"shape": "2"}}, bytes(8), "list of"),
        ({"a": ENTRY | {"shape": [3]}}, bytes(8), "needs 12 bytes"),
        ({"a": ENTRY | {"data_offsets": [0, 16]}}, bytes(8), "outside the data region"),
        ({"a": ENTRY | {"data_offsets": [8, 0]}}, bytes(8), "outside the data region"),
        ({"a": ENTRY | {"data_offsets": [0]}}, bytes(8), r"\[begin, end\]"),
        ({"a": ENTRY | {"extra": 1}}, bytes(8), "keys dtype, shape"),
        ({"a": [1]}, bytes(8), "keys dtype, shape"),
        ({"a": ENTRY, "b": ENTRY}, bytes(8), "overlaps"),
        ({"a": ENTRY | {"data_offsets": [4, 12]}}, bytes(12), "hole"),
        ({"a": ENTRY}, bytes(9), "trailing"),
        ({"a": ENTRY, "__metadata__": {"k": 1}}, bytes(8), "map str to str"),
        ({"a": ENTRY, "__metadata__": []}, bytes(8), "map str to str"),
        (
            '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {}}',
            bytes(8),
            "duplicate",
        ),
        (
            '{"a": {"dtype": "F32", "dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}',
            bytes(8),
            "duplicate",
        ),
        (
            '{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}',
            bytes(8),
            "constant NaN",
        ),
        (
            '{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 8]}}',
            bytes(8),
            "not valid JSON",
        ),
    ],
)
def test_malformed_headers(header: str | bytes | dict, data: bytes, match: str) -> None:
    with pytest.raises(StateError, match=match):
        State.deserialize(payload(header, data))


def test_zero_size_entries_with_huge_dims_stay_apart() -> None:
    """Ten [2**62, 0] tensors are valid, but one merged run would overflow torch's int64."""
    header = {f"k{i}": ZERO | {"shape": [2**62, 0]} for i in range(10)}
    header["z"] = ZERO | {"shape": [0, 2**62 - 1]}
    for data in (payload(header), bytearray(payload(header))):
        s = State.deserialize(data, copy=isinstance(data, bytes))
        assert list(s.tensors) == [*(f"k{i}" for i in range(10)), "z"]
        assert all(t.shape == (2**62, 0) for k, t in s.tensors.items() if k != "z")
        assert s.tensors["z"].shape == (0, 2**62 - 1)


def test_zero_dim_mutations_only_state_error_escapes() -> None:
    """Mutations of a seed with a zero-size tensor ("e", [0, 2]) that the shape rewrite turns
    into zero + huge dims: only StateError escapes."""
    rng = random.Random(5)
    seed = seeds()[2]
    for _ in range(2000):
        with contextlib.suppress(StateError):
            State.deserialize(mutate(rng, seed, [seed]))


def worldflux_md(**overrides: str) -> dict:
    md = {"format": "worldflux.state", "version": "v1", "integrity": "none", "meta": "{}"}
    md |= {"requires_grad": "[]", "device": "cpu"}
    md.update(overrides)
    return {k: v for k, v in md.items() if v != "<drop>"}


@pytest.mark.parametrize(
    ("md", "match"),
    [
        (worldflux_md(version="v2"), "unsupported version"),
        (worldflux_md(integrity="md5"), "unknown integrity"),
        (worldflux_md(integrity="<drop>"), "unknown integrity"),
        (worldflux_md(integrity="xxh3_64"), "declared but no checksum"),
        (worldflux_md(integrity="crc32", checksum="crc32:xyz"), "malformed checksum"),
        (worldflux_md(checksum="crc32:00000000"), "disagrees with integrity"),
        (worldflux_md(meta="[1]"), "meta must be a JSON object"),
        (worldflux_md(meta="{"), "not valid JSON"),
        (worldflux_md(meta='{"a":' * 100 + "1" + "}" * 100), "nests deeper"),
        (worldflux_md(meta='{"a": 1, "a": 2}'), "duplicate"),
        (worldflux_md(requires_grad='["i"]'), "floating tensors"),
        (worldflux_md(requires_grad='["nope"]'), "floating tensors"),
        (worldflux_md(requires_grad='"x"'), "floating tensors"),
        ({"checksum": "xxh3_64:" + "0" * 16}, "mismatch"),
        (worldflux_md(format="worldflux.stapt"), "carries worldflux fields"),
        (worldflux_md(format="<drop>"), "carries worldflux fields"),
        ({"format": "pt", "meta": "{}"}, "carries worldflux fields"),
        (worldflux_md(meta="<drop>", mdta="{}"), "exactly the keys"),
        (worldflux_md(requires_grad="<drop>"), "exactly the keys"),
        (worldflux_md(extra="1"), "exactly the keys"),
        ({"checksum": "sha1:00"}, "malformed checksum"),
    ],
)
def test_malformed_worldflux_tags(md: dict, match: str) -> None:
    header = {
        "__metadata__": md,
        "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "i": {"dtype": "I32", "shape": [1], "data_offsets": [4, 8]},
    }
    with pytest.raises(StateError, match=match):
        State.deserialize(payload(json.dumps(header, separators=(",", ":")), bytes(8)))


@pytest.mark.parametrize("length", [0, 1, 2**63, 2**64 - 1, 10**9])
def test_header_length_out_of_range(length: int) -> None:
    with pytest.raises(StateFormatError, match="header length"):
        State.deserialize(struct.pack("<Q", length) + b"{}" + bytes(6))
    with pytest.raises(StateFormatError, match="at least 8 bytes"):
        State.deserialize(b"\x02\x00")


def test_header_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload_mod, "MAX_HEADER", 64)
    big = {"__metadata__": {"pad": "x" * 100}}
    with pytest.raises(StateFormatError, match="header length"):
        State.deserialize(payload(big))


def test_claimed_sizes_never_allocate() -> None:
    """A header claiming huge tensors is refused before any allocation of that size."""
    header = {"a": {"dtype": "F64", "shape": [2**20, 2**20], "data_offsets": [0, 2**43]}}
    data = payload(header, bytes(16))
    tracemalloc.start()
    with pytest.raises(StateFormatError):
        State.deserialize(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize(
    "header",
    [
        {"__metadata__": {f"k{i}": "" for i in range(20_000)}},
        '{"__metadata__": {"a": "' + "b" * 400_000 + '"}, "x": 1}',
        "[" + "0," * 200_000 + "0]",
        {"__metadata__": {"requires_grad": "[" + "0," * 100_000 + "0]"}},
    ],
)
def test_adversarial_headers_allocate_a_bounded_multiple(header: str | dict) -> None:
    """Parsing a hostile header allocates (Python objects) at most ~40x the payload size."""
    data = payload(header)
    tracemalloc.start()
    with contextlib.suppress(StateError):
        State.deserialize(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * len(data), (peak, len(data))


def test_checksum_error_subclass() -> None:
    data = bytearray(State({"a": torch.ones(3)}).serialize(checksum="crc32"))
    data[-2] ^= 0x10
    with pytest.raises(ChecksumError):
        State.deserialize(data)


def _outcome(data: bytes) -> object:
    try:
        s = State.deserialize(data)
    except StateError:
        return "error"
    return s


def test_cached_and_fresh_parses_agree() -> None:
    """Differential: the layout caches (exact and skeleton) never accept what a cold parse
    refuses, nor return anything different, on mutations that favour the cached strings."""
    rng = random.Random(7)
    pool = seeds()
    tokens = (b'"meta":"', b'"checksum":"')
    for _ in range(3000):
        base = rng.choice(pool)
        State.deserialize(base)  # prime the caches with the valid original
        buf = bytearray(base)
        at = base.find(rng.choice(tokens))
        if at >= 0 and rng.random() < 0.8:  # mutate inside (or just after) the cached string
            i = min(len(buf) - 1, at + rng.randrange(len(tokens[0]) - 1, 40))
            buf[i : i + 1] = rng.choice([b'"', b"\\", b"{", b"}", b" ", b"0", b"a", b"\x01", b""])
            buf[:8] = struct.pack("<Q", int.from_bytes(base[:8], "little") + len(buf) - len(base))
        else:
            buf = bytearray(mutate(rng, base, pool))
        data = bytes(buf)
        cached = _outcome(data)
        payload_mod.clear_caches()
        fresh = _outcome(data)
        if isinstance(fresh, State):
            assert isinstance(cached, State) and cached.equal(fresh), data
        else:
            assert cached == "error", data
