"""Packed States (tensors that are views of one buffer): one-copy serialize and publish.

The fast path must write exactly the bytes the general path writes for the same tensors, and
must step aside whenever the State no longer holds the tensors it was packed with.
"""

from __future__ import annotations

import json
import struct

import torch
from _state_strategies import states
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflux.core.serialization import shm
from worldflux.core.state import State


def unpacked(state: State) -> State:
    """The same tensors in a State without a packing (the general path's reference)."""
    return State(dict(state.tensors), dict(state.meta))


def sample(n: int = 12) -> State:
    g = torch.Generator().manual_seed(0)
    tensors = {f"k{i:02d}": torch.randn(4, 3, generator=g) for i in range(n)}
    tensors["ids"] = torch.arange(4)
    tensors["flag"] = torch.tensor([True, False, True, True])
    return State(tensors, {"step": 1})


def test_deserialize_attach_and_packed_return_packed_states() -> None:
    s = sample()
    assert s._packing is None
    data = s.serialize()
    assert State.deserialize(data)._packing is not None
    assert State.deserialize(bytearray(data), copy=False)._packing is not None
    packed = s.packed()
    assert packed._packing is not None and packed.equal(s)
    with shm.SegmentPool("test_packing") as pool:
        desc = pool.publish(s)
        for copy in (False, True):
            attached = State.from_shared_memory(desc, copy=copy)
            assert attached._packing is not None and attached.equal(s)
            attached.close_shared_memory(unlink=False)
            if not copy:  # the packing holds the mapping: not past close
                assert attached._packing is None


@settings(max_examples=60, deadline=None)
@given(states(max_keys=10))
def test_packed_serialize_is_byte_identical_to_the_general_path(state: State) -> None:
    packed = state.packed()
    for checksum in (False, "crc32"):
        expected = unpacked(packed).serialize(checksum=checksum)
        assert packed.serialize(checksum=checksum) == expected
        assert packed._packing is not None and packed._packing.templates  # fast path taken
        assert packed.serialize(checksum=checksum) == expected  # cached header, again


def test_writes_into_packed_tensors_are_published() -> None:
    s = sample().packed()
    s.serialize()
    assert s._packing is not None and s._packing.templates["none"] is not None
    s.tensors["k03"].fill_(7.0)
    s.tensors["ids"][1] = 42
    s.meta["step"] = 2  # meta is spliced in per call, packed or not
    back = State.deserialize(s.serialize(checksum=True))
    assert back.equal(s) and back.meta == {"step": 2}
    with shm.SegmentPool("test_packing") as pool:
        desc = pool.publish(s)
        s.tensors["k05"].zero_()
        desc = pool.publish(s)
        attached = State.from_shared_memory(desc, copy=True)
        assert attached.equal(s) and float(attached.tensors["k05"].abs().sum()) == 0.0


def test_changed_keys_or_tensors_fall_back_to_the_general_path() -> None:
    edits = {
        "replace": lambda t: t.__setitem__("k01", torch.ones(4, 3)),
        "add": lambda t: t.__setitem__("new", torch.ones(2)),
        "delete": lambda t: t.pop("k02"),
        "rename": lambda t: t.__setitem__("renamed", t.pop("k00")),
        "same values, new object": lambda t: t.__setitem__("k04", t["k04"].clone()),
        "new dtype, equal value": lambda t: t.__setitem__("flag", t["flag"].to(torch.uint8)),
    }
    for name, edit in edits.items():
        s = sample().packed()
        s.serialize()  # the fast path has been taken once
        edit(s.tensors)
        assert s.serialize() == unpacked(s).serialize(), name
        assert State.deserialize(s.serialize()).equal(s), name


def test_metadata_changed_before_the_first_write_is_seen() -> None:
    """The first fast write checks every tensor against the buffer: a reshaped or rebound
    tensor turns the fast path off; a new requires_grad goes into its header."""
    for edit, fast in (
        (lambda t: t.unsqueeze_(0), False),
        (lambda t: t.t_(), False),
        (lambda t: t.set_(torch.zeros(2, 6)), False),
        (lambda t: t.requires_grad_(True), True),
    ):
        s = sample().packed()
        edit(s.tensors["k01"])
        assert s.serialize() == unpacked(s).serialize()
        assert s._packing is not None and (s._packing.templates["none"] is not None) == fast


def foreign_payload() -> bytes:
    """A valid safetensors file whose data order (int16 before float32) is not ours."""
    header = {
        "z": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = torch.tensor([1, 2], dtype=torch.int16).view(torch.uint8).numpy().tobytes()
    data += torch.tensor([0.5, 1.5]).view(torch.uint8).numpy().tobytes()
    return struct.pack("<Q", len(raw)) + raw + data


def test_foreign_data_order_is_republished_correctly() -> None:
    """The packing's first check sends a buffer laid out unlike our own down the general
    path, instead of copying it under a header that places the tensors elsewhere."""
    s = State.deserialize(foreign_payload())
    assert s._packing is not None
    data = s.serialize()
    assert s._packing.templates["none"] is None  # checked once, refused, remembered
    assert data == unpacked(s).serialize() and State.deserialize(data).equal(s)


def test_empty_and_zero_size_states_pack() -> None:
    for s in (State(), State({"e": torch.empty(0, 3), "x": torch.ones(2)})):
        p = s.packed()
        assert p.equal(s) and p.serialize() == s.serialize()


@settings(max_examples=40, deadline=None)
@given(states(max_keys=10), st.sampled_from([False, "crc32"]))
def test_packed_publish_writes_the_general_paths_bytes(state: State, checksum: object) -> None:
    """The slice-assigned header and buffer of a packed publish: the bytes of `serialize`."""
    packed = state.packed()
    expected = unpacked(packed).serialize(checksum=checksum)
    with shm.SegmentPool("test_packing", checksum=checksum) as pool:
        for meta in ({"a": 1}, {}, {"a": 1}):  # plans are cached per meta: each must follow
            packed.meta = meta
            expected = unpacked(packed).serialize(checksum=checksum)
            desc = pool.publish(packed)
            with open(shm.SHM_DIR + desc["name"], "rb") as f:
                assert f.read()[8 : 8 + desc["size"]] == expected


def test_a_moved_storage_is_followed() -> None:
    """`resize_` may move the buffer: the next write must read it where it is now."""
    s = sample().packed()
    with shm.SegmentPool("test_packing") as pool:
        pool.publish(s)  # plans made for the buffer where it is now
    storage = s.tensors["k00"].untyped_storage()
    before = storage.data_ptr()
    storage.resize_(storage.nbytes() * 64)  # large enough that realloc moves it
    assert storage.data_ptr() != before
    s.tensors["k02"].fill_(5.0)
    assert s.serialize() == unpacked(s).serialize()
    with shm.SegmentPool("test_packing") as pool:  # the memoryview path
        attached = State.from_shared_memory(pool.publish(s), copy=True)
        assert attached.equal(s)


def test_same_sized_headers_of_different_layouts_alternate() -> None:
    """The header cache in front (keyed by lengths, checked by memcmp) never mixes them up."""
    x = torch.arange(6.0).reshape(2, 3)
    a, b = State({"a": x}), State({"b": x.int()})
    da, db = a.serialize(), b.serialize()
    assert len(da) == len(db) and da[:8] == db[:8]
    for _ in range(3):
        assert State.deserialize(da).equal(a) and State.deserialize(db).equal(b)
