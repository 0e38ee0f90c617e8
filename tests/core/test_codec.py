"""Binary format v1: round trips, safetensors interop, dtypes, zero-copy, checksums, errors."""

from __future__ import annotations

import json
import re
import struct

import pytest
import safetensors.torch as sft
import torch
from _state_strategies import ALL_DTYPES, random_tensor, states
from hypothesis import given, settings

from worldflux.core.exceptions import ChecksumError, StateError, StateFormatError
from worldflux.core.serialization import payload
from worldflux.core.state import State


def raw_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of `t` in row-major order (a fresh dense copy, so any strides work)."""
    dense = torch.empty(t.shape, dtype=t.dtype)
    dense.copy_(t.detach())
    return dense.reshape(-1).view(torch.uint8)


def bitwise_equal(a: State, b: State, ordered: bool = True) -> bool:
    """Same keys (in the same order), dtypes, shapes and bytes (NaN payloads included)."""
    same_keys = list(a.tensors) == list(b.tensors) if ordered else set(a.tensors) == set(b.tensors)
    if not same_keys or a.meta != b.meta:
        return False
    for k, x in a.tensors.items():
        y = b.tensors[k]
        if x.dtype != y.dtype or x.shape != y.shape or x.requires_grad != y.requires_grad:
            return False
        if not torch.equal(raw_bytes(x), raw_bytes(y)):
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(states())
def test_roundtrip_property(s: State) -> None:
    data = s.serialize()
    assert isinstance(data, bytes)
    assert bitwise_equal(State.deserialize(data), s)
    assert bitwise_equal(State.deserialize(bytearray(data), copy=False), s)
    assert bitwise_equal(State.deserialize(memoryview(data)), s)
    assert bitwise_equal(State.deserialize(data[:], copy=True), s)
    checked = s.serialize(checksum=True)
    assert bitwise_equal(State.deserialize(checked), s)


@settings(max_examples=60, deadline=None)
@given(states())
def test_safetensors_reads_our_bytes(s: State) -> None:
    loaded = sft.load(s.serialize(checksum=True))
    assert set(loaded) == set(s.tensors)
    for k, t in s.tensors.items():
        assert bitwise_equal(State({k: loaded[k]}), State({k: t}))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_both_ways(dtype: torch.dtype) -> None:
    t = random_tensor(dtype, (3, 5), seed=1)
    ours = State({"t": t, "scalar": random_tensor(dtype, (), 2), "empty": t[:0]})
    back = State.deserialize(sft.save(ours.tensors))
    assert bitwise_equal(back, ours, ordered=False)  # safetensors sorts names
    assert bitwise_equal(State.deserialize(ours.serialize()), ours)


def test_safetensors_file_with_foreign_metadata() -> None:
    data = sft.save({"w": torch.arange(6.0).reshape(2, 3)}, metadata={"format": "pt"})
    s = State.deserialize(data)
    assert torch.equal(s.tensors["w"], torch.arange(6.0).reshape(2, 3))
    assert s.meta == {}


def test_layout_is_aligned_and_safetensors_shaped() -> None:
    s = State({"a": torch.zeros(3, dtype=torch.uint8), "b": torch.ones(2, dtype=torch.float64)})
    data = s.serialize()
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(data[8 : 8 + n])
    md = header["__metadata__"]
    assert md["format"] == "worldflux.state" and md["version"] == "v1"
    assert header["b"]["data_offsets"] == [0, 16]  # 8-byte items first: aligned, no hole
    assert header["a"]["data_offsets"] == [16, 19]
    assert len(data) == 8 + n + 19


def test_requires_grad_meta_device_recorded() -> None:
    x = torch.randn(2, 3, requires_grad=True)
    s = State({"x": x, "i": torch.arange(2)}, {"step": 3, "tags": ["a"]})
    data = s.serialize()
    back = State.deserialize(data)
    assert back.tensors["x"].requires_grad and back.tensors["x"].is_leaf
    assert not back.tensors["i"].requires_grad
    assert back.meta == {"step": 3, "tags": ["a"]}
    assert payload.parse_header(memoryview(data)).metadata["device"] == "cpu"


def test_zero_copy_views_alias_the_buffer() -> None:
    s = State({"a": torch.arange(8, dtype=torch.float32).reshape(2, 4)})
    buf = bytearray(s.serialize())
    view = State.deserialize(buf, copy=False)
    view.tensors["a"][0, 0] = 42.0
    assert State.deserialize(bytes(buf)).tensors["a"][0, 0] == 42.0
    copied = State.deserialize(buf)
    copied.tensors["a"][0, 1] = -1.0
    assert State.deserialize(bytes(buf)).tensors["a"][0, 1] == 1.0
    with pytest.raises(StateError, match="copy=False needs a writable buffer"):
        State.deserialize(bytes(buf), copy=False)


def test_deserialized_tensors_are_independent_of_input() -> None:
    s = State({"a": torch.randn(4, 4), "b": torch.randn(4, 4)})
    data = bytearray(s.serialize())
    back = State.deserialize(data)
    data[-5:] = b"\x00" * 5
    assert back.equal(s)
    back.tensors["a"].add_(1)  # views of one allocation must not overlap
    assert torch.equal(back.tensors["b"], s.tensors["b"])
    sft.save(back.tensors)  # safetensors accepts them (no overlapping storage)


def test_checksum_detects_every_single_bit_flip() -> None:
    s = State({"a": torch.randn(2, 3), "b": torch.arange(4)}, {"k": "v"})
    for algo in ("xxh3_64", "crc32"):
        data = s.serialize(checksum=algo)
        assert State.deserialize(data).equal(s)
        for byte in range(len(data)):
            for bit in range(8):
                flipped = bytearray(data)
                flipped[byte] ^= 1 << bit
                with pytest.raises(StateError):
                    State.deserialize(flipped)


def test_checksum_mismatch_is_a_checksum_error() -> None:
    data = bytearray(State({"a": torch.zeros(4)}).serialize(checksum=True))
    data[-1] ^= 1
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        State.deserialize(data)


def test_version_format_and_checksum_arguments() -> None:
    s = State({"a": torch.zeros(1)})
    assert s.serialize(version="v1", format="binary") == s.serialize()
    with pytest.raises(StateFormatError, match="version must be 'v1'"):
        s.serialize(version="v2")
    with pytest.raises(StateFormatError, match="format must be 'binary'"):
        s.serialize(format="json")
    with pytest.raises(StateError, match="checksum must be"):
        s.serialize(checksum="md5")


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"f": object()}, "not JSON-serializable"),
        ({"t": (1, 2)}, "round trip"),
        ({1: "a"}, "round trip"),
        ({"x": float("nan")}, "not JSON-serializable"),
    ],
)
def test_non_json_meta(meta: dict, match: str) -> None:
    with pytest.raises(StateError, match=match):
        State({"a": torch.zeros(1)}, meta).serialize()


def test_serialize_input_errors() -> None:
    with pytest.raises(StateError, match="keys must be str"):
        State({3: torch.zeros(1)}).serialize()  # type: ignore[dict-item]
    with pytest.raises(StateError, match="must be a Tensor"):
        State({"a": [1.0]}).serialize()  # type: ignore[dict-item]
    with pytest.raises(StateError, match="dtype torch.complex128"):
        State({"a": torch.zeros(1, dtype=torch.complex128)}).serialize()
    with pytest.raises(StateError, match="bytes, bytearray or memoryview"):
        State.deserialize(12)  # type: ignore[arg-type]


def test_empty_state_roundtrips() -> None:
    back = State.deserialize(State().serialize())
    assert back.tensors == {} and back.meta == {}


def test_same_structure_different_values_and_order() -> None:
    a = State({"x": torch.zeros(2, 2), "y": torch.ones(2, dtype=torch.int8)})
    b = State({"y": torch.ones(2, dtype=torch.int8), "x": torch.full((2, 2), 3.0)})
    for s in (a, b, a):  # header templates are cached: values and order must still follow
        back = State.deserialize(s.serialize())
        assert list(back.tensors) == list(s.tensors) and back.equal(s)


def test_long_runs_take_the_batched_paths() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {f"eq{i}": torch.randn(3, 4, generator=g) for i in range(20)}
    tensors |= {
        f"var{i}": torch.randn(i % 4, 4, generator=g, dtype=torch.float64) for i in range(15)
    }
    tensors |= {f"s{i}": torch.tensor(i, dtype=torch.int32) for i in range(10)}
    tensors["eq3"] = torch.randn(4, 3, generator=g).t()  # non-contiguous inside a cat run
    tensors["eq5"] = tensors["eq5"].clone().requires_grad_(True)
    s = State(tensors, {"n": len(tensors)})
    for checksum in (False, True):
        data = s.serialize(checksum=checksum)
        assert bitwise_equal(State.deserialize(data), s)
        assert bitwise_equal(State.deserialize(bytearray(data), copy=False), s)


def misaligned_payload() -> bytes:
    """A legal safetensors layout whose F32 tensor starts at data byte 3."""
    header = {
        "u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    data = bytes([1, 2, 3]) + struct.pack("<2f", 1.5, -2.0)
    return struct.pack("<Q", len(raw)) + raw + data


def test_misaligned_tensors_are_copied_not_viewed() -> None:
    data = misaligned_payload()
    for buf, copy in ((data, True), (bytearray(data), False)):
        s = State.deserialize(buf, copy=copy)
        assert s.tensors["f"].tolist() == [1.5, -2.0] and s.tensors["u"].tolist() == [1, 2, 3]
        assert s.tensors["f"].data_ptr() % 4 == 0
    shifted = memoryview(bytearray(b"x" + State({"a": torch.arange(4.0)}).serialize()))[1:]
    s = State.deserialize(shifted, copy=False)  # odd address: every tensor misaligned
    assert s.tensors["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert s.tensors["a"].data_ptr() % 4 == 0


def test_without_xxhash_falls_back_to_crc32(monkeypatch: pytest.MonkeyPatch) -> None:
    from worldflux.core.serialization import checksum

    s = State({"a": torch.arange(3.0)})
    xxh = s.serialize(checksum="xxh3_64")
    monkeypatch.setattr(checksum, "xxhash", None)
    data = s.serialize(checksum=True)
    assert payload.parse_header(memoryview(data)).algo == "crc32"
    assert State.deserialize(data).equal(s)
    with pytest.raises(StateError, match="needs `pip install xxhash`"):
        s.serialize(checksum="xxh3_64")
    with pytest.raises(StateError, match="cannot be verified without xxhash"):
        State.deserialize(xxh)
    with pytest.raises(StateError, match="checksum must be"):
        s.serialize(checksum=["crc32"])  # type: ignore[arg-type]


def test_meta_changes_between_calls_with_one_structure() -> None:
    s = State({"a": torch.arange(4.0), "b": torch.zeros(2, 2)})
    for step in range(3):
        s.meta = {"step": step, "name": "x" * step, "q": '"quoted" \\ {json}'}
        for checksum in (False, True):
            data = s.serialize(checksum=checksum)
            assert bitwise_equal(State.deserialize(data), s)
            assert State.deserialize(sft.save(sft.load(data))).tensors.keys() == s.tensors.keys()


def test_reserved_key_is_refused() -> None:
    with pytest.raises(StateError, match="reserved"):
        State({"__metadata__": torch.zeros(1)}).serialize()


def test_changing_meta_revalidates_only_the_meta_string(monkeypatch: pytest.MonkeyPatch) -> None:
    payload.clear_caches()
    s = State({"a": torch.arange(3.0)}, {"step": 0})
    first = s.serialize(checksum=True)
    assert State.deserialize(first).meta == {"step": 0}
    for meta in ({"step": 12345}, {"step": 1, "note": 'a "quoted" }{ text'}, {}):
        s.meta = meta
        data = s.serialize(checksum=True)
        assert State.deserialize(data).equal(s)  # data_start and checksum moved: still right
        assert (
            payload.parse_header(memoryview(data)).metadata["meta"]
            == json.dumps(meta, separators=(",", ":"))
            or meta == {}
        )
    with pytest.raises(StateError, match="nests deeper"):
        State({"a": torch.zeros(1)}, {"deep": json.loads("[" * 70 + "]" * 70)}).serialize()
    plain = State({"a": torch.arange(3.0)}, {"step": 0}).serialize()
    assert State.deserialize(plain).meta == {"step": 0}  # remembers the skeleton
    deep = json.dumps(json.dumps({"deep": json.loads("[" * 70 + "]" * 70)})).encode()
    cases = [
        (deep, "nests deeper"),
        (b'"\x01"', "not (a )?valid JSON"),  # raw control character
        (b'"{\\"a\\": 1, \\"a\\": 2}"', "duplicate"),
        (b'"\\ud800 \\q"', "not a valid JSON string"),  # invalid escape
        (b'"[1]"', "meta must be a JSON object"),
    ]
    for literal, match in cases:
        with pytest.raises(StateError, match=match):
            State.deserialize(with_meta_literal(plain, literal))
    monkeypatch.setattr(payload, "build_layout", None)  # from here on: skeleton cache only
    assert State.deserialize(with_meta_literal(plain, b'"{\\"k\\": [1]}"')).meta == {"k": [1]}
    s.meta = {"step": 99}
    assert State.deserialize(s.serialize(checksum=True)).equal(s)


def with_meta_literal(data: bytes, literal: bytes) -> bytes:
    """`data` with its meta JSON string replaced by `literal` (header re-padded)."""
    n = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + n].rstrip(b" ")
    begin = raw.find(b'"meta":"') + len(b'"meta":')
    end = re.compile(rb'"(?:[^"\\]|\\.)*"').match(raw, begin).end()
    raw = raw[:begin] + literal + raw[end:]
    raw += b" " * (-(8 + len(raw)) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


@pytest.mark.filterwarnings("ignore::UserWarning")  # sparse CSR, nested: beta/prototype
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: torch.eye(2).to_sparse(), "sparse_coo"),
        (lambda: torch.eye(2).to_sparse_csr(), "sparse_csr"),
        (lambda: torch.zeros(2, device="meta"), "meta"),
        (lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]), "nested"),
    ],
)
def test_unsupported_layouts_are_refused(make, kind: str) -> None:
    s = State({"bad": make()})
    with pytest.raises(StateError, match=rf"tensors\['bad'\] must be a dense .*{kind} tensor"):
        s.serialize()


def test_strided_memoryview_and_non_bool_copy_are_state_errors() -> None:
    data = State({"a": torch.ones(3)}).serialize()
    with pytest.raises(StateError, match="must be contiguous bytes"):
        State.deserialize(memoryview(data)[::2])
    with pytest.raises(StateError, match="copy must be a bool, got 'no'"):
        State.deserialize(data, copy="no")  # type: ignore[arg-type]


def _c(*shape: int) -> torch.Tensor:
    """A complex64 tensor with distinct, non-zero real and imaginary parts."""
    n = int(torch.tensor(shape).prod()) if shape else 1
    re_, im = torch.arange(1, n + 1, dtype=torch.float32), -torch.arange(2, n + 2.0)
    return torch.complex(re_, im).reshape(shape)


def conj_neg_views() -> dict[str, torch.Tensor]:
    """Tensors whose conj/neg bit must be resolved: contiguous, strided, real, int, complex."""
    return {
        "conj": _c(3, 2).conj(),  # contiguous, conj bit
        "conj_strided": _c(3, 4).conj()[:, ::2],
        "imag_of_conj": _c(3, 2).conj().imag,  # real float32 with the neg bit (strided)
        "neg_contig": torch._neg_view(torch.arange(6.0).reshape(3, 2)),
        "neg_int": torch._neg_view(torch.arange(3, dtype=torch.int64)),
        "neg_conj": torch._neg_view(_c(3).conj()),
        "plain": torch.arange(3.0),
    }


def test_conj_and_neg_views_serialize_their_values() -> None:
    src = conj_neg_views()
    assert src["conj"].is_conj() and src["imag_of_conj"].is_neg()
    assert src["neg_contig"].is_contiguous() and src["neg_contig"].is_neg()
    expected = {k: v.resolve_conj().resolve_neg() for k, v in src.items()}
    for payload_ in (State(src).serialize(), State(src).serialize(checksum=True)):
        out = State.deserialize(payload_)
        assert out.equal(State(expected))
        assert not any(t.is_conj() or t.is_neg() for t in out.tensors.values())
        assert sft.load(payload_)["conj"].equal(expected["conj"])
    # one key at a time (memmove path) and as a long run of one dtype (torch.cat path)
    for key, t in src.items():
        assert State.deserialize(State({key: t}).serialize()).tensors[key].equal(expected[key])
    run = {f"k{i}": _c(1, 2).conj() if i % 2 else _c(1, 2) for i in range(16)}
    out = State.deserialize(State(run).serialize())
    assert out.equal(State({k: v.resolve_conj() for k, v in run.items()}))


def test_a_plain_tensor_after_a_neg_view_of_one_structure_is_copied_raw() -> None:
    # the structure (and so its cached template) is the same: the bit is read per call
    neg = State({"a": torch._neg_view(torch.ones(4))}).serialize()
    plain = State({"a": torch.ones(4)}).serialize()
    assert State.deserialize(neg).tensors["a"].equal(-torch.ones(4))
    assert State.deserialize(plain).tensors["a"].equal(torch.ones(4))
