"""Shared memory across processes: only JSON descriptors cross, plain values come back; a
consumer never deletes a producer's segment, leaks nothing, and forged descriptors fail."""

from __future__ import annotations

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
from _shm_workers import make, open_fds, own_segments

from worldflux.core.exceptions import StateError
from worldflux.core.serialization import shm
from worldflux.core.state import State

NS = f"test-mp-{os.getpid()}"
pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")


@pytest.fixture(autouse=True)
def _clean() -> None:
    yield
    shm.cleanup_namespace(NS, include_live=True)


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
