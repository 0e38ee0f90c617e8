"""Shared memory in one process: zero-copy attach, lifetimes, descriptor checks, namespaces,
leaks. Several processes: test_shm_processes.py."""

from __future__ import annotations

import copy
import gc
import json
import os

import pytest
import torch
from _shm_workers import make, open_fds, own_segments

from worldflux.core.exceptions import SharedMemoryError, StateError, StateFormatError
from worldflux.core.serialization import codec, shm
from worldflux.core.state import State

NS = f"test-{os.getpid()}"
pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")


@pytest.fixture(autouse=True)
def _clean() -> None:
    yield
    shm.cleanup_namespace(NS, include_live=True)


def test_publish_attach_zero_copy_and_close() -> None:
    s = make()
    desc = s.to_shared_memory(namespace=NS)
    assert json.loads(json.dumps(desc)) == desc
    assert desc["name"].startswith(f"/worldflux_{NS}_")
    a = State.from_shared_memory(desc, copy=False)
    assert a.equal(s)
    assert "_attachment" not in a.meta and a.meta == {"step": 1}
    b = State.from_shared_memory(desc)
    a.tensors["deter"][0, 0] = 123.0  # a shared mapping: visible to the other attachment
    assert b.tensors["deter"][0, 0] == 123.0
    a.close_shared_memory(unlink=False)
    b.close_shared_memory(unlink=True)
    assert shm.list_segments(NS) == []
    with pytest.raises(SharedMemoryError, match="does not exist"):
        State.from_shared_memory(desc)


def test_views_outlive_close_and_unlink() -> None:
    s = make()
    a = State.from_shared_memory(s.to_shared_memory(NS))
    deter = a.tensors["deter"]
    derived = a[1:3].to("cpu")
    a.close_shared_memory(unlink=True)
    del a
    gc.collect()
    assert torch.equal(deter, s.tensors["deter"])  # mapping kept alive by the view
    deter.add_(1)
    assert torch.equal(derived.tensors["stoch"], s.tensors["stoch"][1:3])


def test_copy_true_is_independent_and_releases_mapping() -> None:
    s = make()
    desc = s.to_shared_memory(NS)
    fds = open_fds()
    c = State.from_shared_memory(desc, copy=True)
    assert open_fds() == fds  # no mapping (nor fd) kept
    assert c.equal(s)
    c.close_shared_memory(unlink=True)  # the consumer may still remove the segment
    assert shm.list_segments(NS) == []


def test_attached_state_can_be_serialized_cloned_copied_and_republished() -> None:
    s = make()
    a = State.from_shared_memory(s.to_shared_memory(NS))
    assert State.deserialize(a.serialize()).equal(s)
    assert a.clone().equal(s)
    assert copy.deepcopy(a).equal(s)
    assert copy.copy(a).equal(s)
    again = State.from_shared_memory(a.to_shared_memory(NS), copy=True)
    assert again.equal(s)
    a.close_shared_memory()


def test_one_fd_per_mapped_segment() -> None:
    """States attached to one segment share its mapping (one fd); all go with the views."""
    descs = [make().to_shared_memory(NS) for _ in range(2)]
    before = open_fds()
    states = [State.from_shared_memory(d) for d in descs for _ in range(5)]
    assert open_fds() == before + 2
    assert len({s.tensors["deter"].data_ptr() for s in states}) == 2
    for attached in states:
        attached.close_shared_memory(unlink=False)
    del states, attached  # the views keep mappings (and their fd) alive until they go
    gc.collect()
    assert open_fds() == before


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": "/etc_passwd"}, "worldflux segment"),
        ({"name": "/worldflux_other_1_0_deadbeef"}, "does not exist"),
        ({"name": "../worldflux_x_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_a/b_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_my_state/../../etc/passwd_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_my_state_1_0_deadbeef/../../x"}, "worldflux segment"),
        ({"name": "/worldflux__1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_" + "x" * 65 + "_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "worldflux_my_state_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_my_state_1_0_deadbeef\n"}, "worldflux segment"),
        ({"name": "/worldflux_my state_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_my_state_x_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_my_state_1_0_DEADBEEF"}, "worldflux segment"),
        ({"name": "/evil_my_state_1_0_deadbeef"}, "worldflux segment"),
        ({"name": "/worldflux_my_state_1_0_deadbeef"}, "does not exist"),
        ({"name": 7}, "worldflux segment"),
        ({"size": 10**9}, "sizes disagree"),
        ({"size": -1}, "non-negative ints"),
        ({"capacity": 4096}, "disagrees with segment"),
        ({"header_len": 3}, "disagrees"),
        ({"generation": 5}, "stale descriptor"),
        ({"format": "other"}, "format"),
        ({"extra": 1}, "keys"),
    ],
)
def test_bad_descriptors(change: dict, match: str) -> None:
    desc = make().to_shared_memory(NS) | change
    with pytest.raises(StateError, match=match):
        State.from_shared_memory(desc)
    with pytest.raises(StateFormatError):
        State.from_shared_memory("not a dict")  # type: ignore[arg-type]


def test_namespace_restriction() -> None:
    desc = make().to_shared_memory(NS)
    with pytest.raises(StateFormatError, match="in namespace 'other'"):
        State.from_shared_memory(desc, namespace="other")
    State.from_shared_memory(desc, namespace=NS, copy=True)


@pytest.mark.parametrize("suffix", ["_my_state", ".v2", "-x_Y.9", "_", "__" + "x" * 60])
def test_namespaces_take_underscores_dots_and_dashes(suffix: str) -> None:
    ns = (NS + suffix)[:64]
    try:
        s = make()
        desc = s.to_shared_memory(namespace=ns)
        assert desc["name"].startswith(f"/worldflux_{ns}_")
        assert shm.list_segments(ns) == [desc["name"]]
        assert State.from_shared_memory(desc, namespace=ns, copy=True).equal(s)
        with shm.SegmentPool(ns) as pool:
            assert State.from_shared_memory(pool.publish(s), copy=True).equal(s)
    finally:
        shm.cleanup_namespace(ns, include_live=True)


def test_a_namespace_never_reaches_into_a_longer_one() -> None:
    outer = NS + "_b"  # "test-<pid>" is a prefix of its name
    try:
        mine, theirs = make().to_shared_memory(NS), make().to_shared_memory(outer)
        assert shm.list_segments(NS) == [mine["name"]]
        assert shm.list_segments(outer) == [theirs["name"]]
        with pytest.raises(StateFormatError, match=f"in namespace '{NS}'"):
            State.from_shared_memory(theirs, namespace=NS)
        assert shm.cleanup_namespace(NS, include_live=True) == 1
        assert shm.list_segments(outer) == [theirs["name"]]
    finally:
        shm.cleanup_namespace(outer, include_live=True)


@pytest.mark.parametrize(
    "namespace", ["", "x" * 65, "a/b", "../x", "a b", "\u00e4", "a\x00", "a:b", "a\n", 3, None]
)
def test_namespaces_outside_the_rule_are_refused(namespace: object) -> None:
    with pytest.raises(SharedMemoryError, match="1-64 ASCII letters, digits, '_', '-' or '.'"):
        make().to_shared_memory(namespace=namespace)  # type: ignore[arg-type]
    with pytest.raises(SharedMemoryError, match="namespace must be"):
        shm.SegmentPool(namespace)  # type: ignore[arg-type]


def test_corrupted_segment_is_a_state_error() -> None:
    s = make()
    desc = s.to_shared_memory(NS)
    with open("/dev/shm/" + desc["name"][1:], "r+b") as f:
        f.seek(20)
        f.write(b"\x00\x00")
    with pytest.raises(StateError):
        State.from_shared_memory(desc)
    checked = s.to_shared_memory(NS, checksum=True)
    with open("/dev/shm/" + checked["name"][1:], "r+b") as f:
        f.seek(8 + checked["size"] - 1)  # the payload's last byte
        f.write(b"\xff")
    with pytest.raises(StateError, match="checksum"):
        State.from_shared_memory(checked)


def test_segment_pool_reuses_and_grows() -> None:
    with shm.SegmentPool(NS, slots=2) as pool:
        s = make()
        d1 = pool.publish(s, slot=0)
        d2 = pool.publish(s, slot=0)
        assert d1["name"] == d2["name"] and d2["generation"] == d1["generation"] + 1
        with pytest.raises(StateFormatError, match="stale"):
            State.from_shared_memory(d1)
        assert State.from_shared_memory(d2, copy=True).equal(s)
        big = State({"x": torch.randn(64, 64)})
        d3 = pool.publish(big, slot=0)
        assert d3["name"] != d1["name"]
        assert State.from_shared_memory(d3, copy=True).equal(big)
        assert pool.publish(s, slot=1)["name"] != d3["name"]
        assert len(shm.list_segments(NS)) == 2
        with pytest.raises(SharedMemoryError, match="slot must be"):
            pool.publish(s, slot=2)
    assert shm.list_segments(NS) == []


def test_close_is_a_no_op_when_never_shared_or_already_closed() -> None:
    s = make()
    s.close_shared_memory()  # never shared: nothing to release, like closing a closed file
    s.close_shared_memory(unlink=False)
    desc = s.to_shared_memory(NS)
    attached = State.from_shared_memory(desc)
    attached.clone().close_shared_memory()  # a copy holds no handle
    attached[1:3].close_shared_memory()
    for _ in range(2):  # closing twice
        attached.close_shared_memory(unlink=True)
        s.close_shared_memory(unlink=True)
    assert shm.list_segments(NS) == []
    assert attached.tensors["deter"].shape == (4, 16)  # views outlive every close


def test_ten_thousand_cycles_leak_nothing() -> None:
    s = State({"a": torch.randn(2, 4)})
    gc.collect()
    fds, segs = open_fds(), own_segments()
    for _ in range(10_000):
        a = State.from_shared_memory(s.to_shared_memory(NS))
        a.close_shared_memory(unlink=True)
    del a
    gc.collect()
    assert open_fds() == fds
    assert own_segments() == segs


def test_unsupported_tensors_publish_nothing() -> None:
    before = own_segments()
    for bad in (torch.eye(2).to_sparse(), torch.zeros(2, device="meta")):
        with pytest.raises(StateError, match=r"tensors\['a'\] must be a dense"):
            State({"a": bad}).to_shared_memory(NS)
    assert own_segments() == before


def test_failed_publish_removes_its_segment_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("copy failed")

    monkeypatch.setattr(codec, "_copy_group", boom)  # fails while the segment is exported
    before = own_segments()
    with pytest.raises(SharedMemoryError, match="RuntimeError: copy failed.*segment was removed"):
        make().to_shared_memory(NS)
    assert own_segments() == before


def test_close_removes_every_published_segment() -> None:
    before = own_segments()
    s = make()
    names = {s.to_shared_memory(NS)["name"] for _ in range(3)}
    assert len(names) == 3 and len(own_segments()) == len(before) + 3
    s.close_shared_memory()
    assert own_segments() == before


def _raw_segment(data: bytes) -> dict:
    """A segment holding hand-made payload bytes, and its descriptor."""
    name, mm = shm.create(NS, 8 + len(data))
    mm[8:] = data
    mm.close()
    header_len = int.from_bytes(data[:8], "little")
    return {
        "format": shm.DESCRIPTOR_FORMAT,
        "name": name,
        "size": len(data),
        "capacity": 8 + len(data),
        "header_len": header_len,
        "generation": 0,
    }


@pytest.mark.parametrize("copy", [False, True])
def test_zero_size_tensors_with_huge_dims_through_shared_memory(copy: bool) -> None:
    zero = {"dtype": "F32", "data_offsets": [0, 0]}
    for shape in ([0, 2**40, 2**40], [2**40, 2**40, 0]):
        header = json.dumps({"a": zero | {"shape": shape}}).encode()
        desc = _raw_segment(len(header).to_bytes(8, "little") + header)
        with pytest.raises(StateFormatError, match="too large"):
            State.from_shared_memory(desc, copy=copy)
    header = json.dumps({f"k{i}": zero | {"shape": [2**62, 0]} for i in range(10)}).encode()
    s = State.from_shared_memory(_raw_segment(len(header).to_bytes(8, "little") + header), copy)
    assert [t.shape for t in s.tensors.values()] == [(2**62, 0)] * 10


def test_pool_and_attach_argument_errors() -> None:
    with pytest.raises(SharedMemoryError, match="headroom must be a number"):
        shm.SegmentPool(NS, headroom="x")  # type: ignore[arg-type]
    with pytest.raises(StateError, match="checksum must be"):
        shm.SegmentPool(NS, checksum="md5")
    with shm.SegmentPool(NS) as pool:
        with pytest.raises(SharedMemoryError, match="state must be a State, got str"):
            pool.publish("x")
        desc = pool.publish(make())
        with pytest.raises(SharedMemoryError, match="copy must be a bool, got 'no'"):
            State.from_shared_memory(desc, copy="no")  # type: ignore[arg-type]


def test_conj_and_neg_views_publish_their_values() -> None:
    c = torch.complex(torch.arange(1.0, 7.0), -torch.arange(2.0, 8.0)).reshape(3, 2)
    src = {
        "conj": c.conj(),
        "imag_of_conj": c.conj().imag,
        "neg_contig": torch._neg_view(torch.arange(6.0).reshape(3, 2)),
        "plain": torch.arange(3.0),
    }
    expected = State({k: v.resolve_conj().resolve_neg() for k, v in src.items()})
    s = State(src)
    for copy_ in (False, True):
        attached = State.from_shared_memory(s.to_shared_memory(NS), copy=copy_)
        assert attached.equal(expected)
        assert not any(t.is_conj() or t.is_neg() for t in attached.tensors.values())
        attached.close_shared_memory(unlink=False)
    with shm.SegmentPool(NS, slots=1) as pool:
        for _ in range(2):  # a fresh slot, then rewritten in place
            attached = State.from_shared_memory(pool.publish(s, slot=0))
            assert attached.equal(expected)
            attached.close_shared_memory(unlink=False)
    s.close_shared_memory()
