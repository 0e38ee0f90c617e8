"""The attach fast paths: a live mapping reused for the same segment, and the descriptor
check's one-expression fast path. Neither may ever serve what the slow path would refuse or
read differently: a replaced, resized or unlinked segment, a rewritten layout, a forged
descriptor."""

from __future__ import annotations

import os

import pytest
import torch
from _shm_workers import make
from _state_strategies import states
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflux.core.exceptions import SharedMemoryError, StateError, StateFormatError
from worldflux.core.serialization import segment_attach, shm
from worldflux.core.state import State

NS = f"test-reuse-{os.getpid()}"
pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")


@pytest.fixture(autouse=True)
def _clean() -> None:
    yield
    shm.cleanup_namespace(NS, include_live=True)


def _write_segment(name: str, capacity: int, payload: bytes, generation: int = 0) -> None:
    """Create segment `name` (it must not exist) holding `payload`, as a foreign writer."""
    fd = shm.open_segment(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    try:
        os.ftruncate(fd, capacity)
        os.pwrite(fd, generation.to_bytes(8, "little") + payload, 0)
    finally:
        os.close(fd)


def test_attaches_of_a_mapped_segment_share_its_mapping() -> None:
    s = make()
    desc = s.to_shared_memory(NS)
    a = State.from_shared_memory(desc)
    b = State.from_shared_memory(desc)
    c = State.from_shared_memory(desc, copy=True)
    assert a.tensors["deter"].data_ptr() == b.tensors["deter"].data_ptr()
    assert c.tensors["deter"].data_ptr() != a.tensors["deter"].data_ptr()
    a.close_shared_memory(unlink=False)  # b's views keep the shared mapping alive
    assert b.equal(s) and State.from_shared_memory(desc).equal(s)


def test_a_replaced_segment_is_never_served_from_the_old_mapping() -> None:
    """Same name, same size, another file (and another layout): the inode tells them apart."""
    old = State({"x": torch.arange(12.0).reshape(3, 4)}, {"v": 1})
    new = State({"y": torch.full((2, 2), 7, dtype=torch.int16)}, {"v": 2})
    desc = old.to_shared_memory(NS)
    a = State.from_shared_memory(desc)  # keeps the old mapping alive
    shm.unlink_segment(desc["name"])
    with pytest.raises(SharedMemoryError, match="does not exist"):
        State.from_shared_memory(desc)
    data = new.serialize()
    assert 8 + len(data) <= desc["capacity"]
    _write_segment(desc["name"], desc["capacity"], data)
    header_len = int.from_bytes(data[:8], "little")
    b = State.from_shared_memory(desc | {"size": len(data), "header_len": header_len})
    assert b.equal(new) and b.meta == {"v": 2} and a.equal(old)


def test_a_resized_segment_is_mapped_afresh() -> None:
    s = make()
    desc = s.to_shared_memory(NS)
    a = State.from_shared_memory(desc)
    fd = shm.open_segment(desc["name"], os.O_RDWR)
    os.ftruncate(fd, desc["capacity"] + 4096)
    os.close(fd)
    with pytest.raises(StateFormatError, match="disagrees with segment"):
        State.from_shared_memory(desc)
    grown = desc | {"capacity": desc["capacity"] + 4096}
    b = State.from_shared_memory(grown)
    assert b.equal(s) and b.tensors["deter"].data_ptr() != a.tensors["deter"].data_ptr()


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_attach_reads_what_was_last_published(data: st.DataObject) -> None:
    """Slots rewritten in place with other layouts, attached while earlier attachments (and
    so the mapping) are alive or gone: every attach reads the last State published."""
    kept: list[State] = []
    last: dict[int, tuple[dict, State]] = {}
    with shm.SegmentPool(NS, slots=2, headroom=1.0) as pool:
        for _ in range(data.draw(st.integers(1, 10))):
            op = data.draw(st.sampled_from(["publish", "attach", "attach", "drop"]))
            slot = data.draw(st.integers(0, 1))
            if op == "publish" or slot not in last:
                s = data.draw(states(max_keys=6))
                last[slot] = (pool.publish(s, slot=slot), s)
            elif op == "attach":
                desc, s = last[slot]
                attached = State.from_shared_memory(desc, copy=data.draw(st.booleans()))
                assert attached.equal(s) and list(attached.tensors) == list(s.tensors)
                kept.append(attached)
            else:
                kept.clear()
    for attached in kept:
        attached.close_shared_memory(unlink=False)


def _outcome(fn: object) -> object:
    try:
        return fn()  # type: ignore[operator]
    except StateError as err:
        return type(err)


_FIELDS = ["format", "name", "size", "capacity", "header_len", "generation"]
_ODD = [-1, 0, 7, 8, 2**63 - 1, 2**63, 2**64, True, False, None, 1.5, "12", [8]]
_ODD += ["worldflux.shm", "other", "/etc_passwd", f"/worldflux_{NS}_1_2_0123abcd"]
_ODD += ["/worldflux_other_1_2_0123abcd", f"/worldflux_{NS}_1_2_0123ABCD"]
_VALUES = st.one_of(st.sampled_from(_ODD), st.integers(-2, 2**64))


def _base_descriptor() -> dict:
    desc = {
        "format": "worldflux.shm",
        "name": f"/worldflux_{NS}_1_2_0123abcd",
        "size": 64,
        "capacity": 128,
        "header_len": 16,
        "generation": 3,
    }
    segment_attach._check_slowly(desc, None)  # the name is now known to the fast path
    return desc


def _agree(desc: dict, namespace: str | None) -> None:
    fast = _outcome(lambda: segment_attach.check_descriptor(desc, namespace))
    slow = _outcome(lambda: segment_attach._check_slowly(desc, namespace))
    assert fast == slow, (desc, namespace)


def test_descriptor_fast_path_agrees_on_every_odd_field() -> None:
    for field in _FIELDS:
        for value in _ODD:
            for namespace in (None, NS, "other"):
                _agree(_base_descriptor() | {field: value}, namespace)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_FIELDS), _VALUES), max_size=3),
    st.sampled_from([None, NS, "other"]),
)
def test_descriptor_fast_path_agrees_with_the_full_checks(
    changes: list[tuple[str, object]], namespace: str | None
) -> None:
    desc = _base_descriptor()
    for field, value in changes:
        desc[field] = value
    _agree(desc, namespace)
