"""Shared memory: zero-copy attach, lifetimes, descriptor checks, leaks, multi-process safety."""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing as mp
import os
import secrets
import subprocess
import sys
import textwrap

import _shm_workers as workers
import pytest
import torch

from worldflux.core import codec, shm
from worldflux.core.exceptions import SharedMemoryError, StateError, StateFormatError
from worldflux.core.state import State

NS = f"test-{os.getpid()}"
pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")


@pytest.fixture(autouse=True)
def _clean() -> None:
    yield
    shm.cleanup_namespace(NS, include_live=True)


def make() -> State:
    return State({"deter": torch.randn(4, 16), "stoch": torch.randn(4, 2, 2)}, {"step": 1})


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


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


def test_one_fd_per_attached_state() -> None:
    desc = make().to_shared_memory(NS)
    before = open_fds()
    states = [State.from_shared_memory(desc) for _ in range(5)]
    assert open_fds() == before + 5
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
    with pytest.raises(SharedMemoryError, match="namespace must be"):
        make().to_shared_memory(namespace="a_b")


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


def test_close_on_unrelated_state_errors() -> None:
    with pytest.raises(SharedMemoryError, match="neither published nor attached"):
        make().close_shared_memory()


def own_segments() -> list[str]:
    """Segments this process created, in any namespace (other jobs share /dev/shm)."""
    return sorted(e for e in os.listdir("/dev/shm") if f"_{os.getpid()}_" in e)


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


def test_cleanup_namespace_removes_orphans_only() -> None:
    code = textwrap.dedent(
        f"""
        import torch
        from worldflux.core.state import State
        State({{"a": torch.zeros(2)}}).to_shared_memory({NS!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # producer "crashes" (exits)
    mine = make().to_shared_memory(NS)
    assert len(shm.list_segments(NS)) == 2
    assert shm.cleanup_namespace(NS) == 1  # only the dead producer's segment
    assert shm.list_segments(NS) == [mine["name"]]
    assert shm.cleanup_namespace(NS, include_live=True) == 1
    assert shm.list_segments(NS) == []


def _consumer_no_close(desc: dict, queue: mp.Queue) -> None:
    state = State.from_shared_memory(desc)
    queue.put(state.batch_size)  # exits holding the mapping


def test_consumer_process_never_deletes_producer_segment() -> None:
    ctx = mp.get_context("spawn")
    s = make()
    desc = s.to_shared_memory(NS)
    queue = ctx.Queue()
    p = ctx.Process(target=_consumer_no_close, args=(desc, queue))
    p.start()
    assert queue.get(timeout=120) == 4
    p.join(timeout=120)
    assert p.exitcode == 0
    assert shm.list_segments(NS) == [desc["name"]]
    assert State.from_shared_memory(desc, copy=True).equal(s)


def test_consumer_exit_prints_no_resource_tracker_warning(tmp_path) -> None:
    desc = make().to_shared_memory(NS)
    code = textwrap.dedent(
        f"""
        import json, multiprocessing as mp
        from worldflux.core.state import State
        def attach(d):
            s = State.from_shared_memory(d)
            s.tensors["deter"].sum()
            s.close_shared_memory(unlink=False)
        if __name__ == "__main__":
            mp.set_start_method("spawn")
            p = mp.Process(target=attach, args=(json.loads({json.dumps(json.dumps(desc))}),))
            p.start(); p.join()
            attach(json.loads({json.dumps(json.dumps(desc))}))
            assert p.exitcode == 0
        """
    )
    script = tmp_path / "consumer.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr
    assert shm.list_segments(NS) == [desc["name"]]


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
    name, mm = shm._create(NS, 8 + len(data))
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


# -- multi-process guarantees: only JSON descriptors cross processes, plain values come back --


def unique_namespace() -> str:
    return f"mp-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def consumer():
    """One 'spawn' consumer process shared by the tests below (its start dominates their time).

    `consumer(worker, *args)` runs `_shm_workers.<worker>(*args)` there and returns its plain
    result; at the end the process must exit 0.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=workers.serve, args=(child,))
    p.start()
    child.close()

    def call(worker: str, *args: object) -> object:
        parent.send((worker, args))
        assert parent.poll(120), f"the consumer sent nothing back for {worker}"
        return parent.recv()  # EOFError if the consumer crashed

    try:
        yield call
        parent.send(None)
    finally:
        p.join(timeout=60)
        parent.close()
        if p.exitcode is None:
            p.kill()
    assert p.exitcode == 0


def test_views_outlive_close_in_a_consumer_process(consumer) -> None:
    ns = unique_namespace()
    try:
        s = make()
        desc = s.to_shared_memory(ns)
        got = consumer("view_outlives_close", json.loads(json.dumps(desc)))
        assert got["closed"] is True
        assert got["values"] == s.tensors["deter"].tolist()
        assert got["sum"] == pytest.approx(float(s.tensors["deter"].sum()), rel=1e-5)
        assert shm.list_segments(ns) == [desc["name"]]  # the consumer removed nothing
        assert State.from_shared_memory(desc, copy=True).equal(s)
    finally:
        shm.cleanup_namespace(ns, include_live=True)


def test_attached_state_republished_by_another_process(consumer) -> None:
    ns, child_ns = unique_namespace(), unique_namespace()
    try:
        s = make()
        desc = s.to_shared_memory(ns)
        report = json.loads(consumer("republish", desc, child_ns))
        assert report["meta"] == {"step": 1}  # no runtime handle leaked into meta
        assert report["serialize_ok"] and report["clone_ok"] and report["pickle_ok"]
        for key in ("attached", "cloned"):
            assert report[key]["name"].startswith(f"/worldflux_{child_ns}_")
            again = State.from_shared_memory(report[key], namespace=child_ns)
            assert again.equal(s) and again.meta == {"step": 1}
            again.close_shared_memory(unlink=True)  # the consumer's segments outlived it
        assert shm.list_segments(child_ns) == []
        assert shm.list_segments(ns) == [desc["name"]]
        s.close_shared_memory()
        assert shm.list_segments(ns) == []
    finally:
        shm.cleanup_namespace(ns, include_live=True)
        shm.cleanup_namespace(child_ns, include_live=True)


def test_bad_descriptors_from_another_process_raise_state_errors(consumer) -> None:
    ns, other_ns = unique_namespace(), unique_namespace()
    try:
        s = make()
        desc = s.to_shared_memory(ns)
        forged = json.loads(consumer("tamper", desc, other_ns))
        assert len(forged) == 12
        fds = open_fds()
        for bad in forged:
            with pytest.raises(StateError):
                State.from_shared_memory(bad, namespace=ns)
            with pytest.raises(StateError):
                State.from_shared_memory(bad, copy=True, namespace=ns)
        gc.collect()
        assert open_fds() == fds  # failed attaches keep no fd or mapping
        assert State.from_shared_memory(desc, copy=True).equal(s)  # the original still works
    finally:
        shm.cleanup_namespace(ns, include_live=True)
        shm.cleanup_namespace(other_ns, include_live=True)


def test_many_cycles_across_processes_leak_nothing(tmp_path) -> None:
    ns, cycles = unique_namespace(), 500
    gc.collect()
    fds, segs = open_fds(), own_segments()
    with open(tmp_path / "stderr.txt", "w+") as err:
        script = os.path.join(os.path.dirname(__file__), "_shm_workers.py")
        proc = subprocess.Popen(
            [sys.executable, script, ns, str(cycles)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            names = set()
            for i in range(cycles):
                desc = json.loads(proc.stdout.readline())
                names.add(desc["name"])
                attached = State.from_shared_memory(desc, copy=False, namespace=ns)
                x = attached.tensors["x"]
                assert attached.meta == {"i": i} and x.shape == (16 * 4 ** (i // 100), 3)
                assert bool((x == i).all())
                attached.close_shared_memory(unlink=False)
                del attached, x
                proc.stdin.write("ack\n")
                proc.stdin.flush()
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            shm.cleanup_namespace(ns, include_live=True)
        err.seek(0)
        stderr = err.read()
    assert len(names) == cycles // 100  # rewritten in place, a fresh segment when it grew
    assert "resource_tracker" not in stderr and "leaked" not in stderr, stderr
    assert shm.list_segments(ns) == []  # the producer removed its segments on exit
    gc.collect()
    assert open_fds() == fds
    assert own_segments() == segs
