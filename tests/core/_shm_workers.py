"""Helpers of the shared-memory tests, and module-level workers for the multi-process ones
(importable under 'spawn'). Only JSON descriptors cross the process boundary; results come back
as plain values.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import sys

import torch

from worldflux.core.serialization import shm
from worldflux.core.state import State


def make() -> State:
    return State({"deter": torch.randn(4, 16), "stoch": torch.randn(4, 2, 2)}, {"step": 1})


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def own_segments() -> list[str]:
    """Segments this process created, in any namespace (other jobs share /dev/shm)."""
    return sorted(e for e in os.listdir("/dev/shm") if f"_{os.getpid()}_" in e)


def serve(conn) -> None:
    """One consumer process for several tests: run `(worker name, args)` requests until None."""
    while (request := conn.recv()) is not None:
        name, args = request
        conn.send(globals()[name](*args))
    conn.close()


def view_outlives_close(desc: dict) -> dict:
    """Attach zero-copy, keep one view, close (no unlink), drop the State, then read the view."""
    state = State.from_shared_memory(desc, copy=False)
    deter = state.tensors["deter"]
    state.close_shared_memory(unlink=False)
    closed = state._attachment.closed
    del state
    gc.collect()
    return {"closed": closed, "sum": float(deter.sum()), "values": deter.tolist()}


def republish(desc: dict, namespace: str) -> str:
    """Attach, serialize, clone, pickle, then re-publish the attached State and its clone."""
    state = State.from_shared_memory(desc, copy=False)
    clone = state.clone()
    report = {
        "meta": state.meta,
        "serialize_ok": State.deserialize(state.serialize()).equal(state),
        "clone_ok": clone.equal(state),
        "pickle_ok": pickle.loads(pickle.dumps(state)).equal(state),
        "attached": state.to_shared_memory(namespace),
        "cloned": clone.to_shared_memory(namespace),
    }
    state.close_shared_memory(unlink=False)  # the producer's and our segments all stay
    return json.dumps(report)


def tamper(desc: dict, other_namespace: str) -> str:
    """Send back forged descriptors: foreign names, a real segment elsewhere, wrong sizes."""
    foreign = State({"x": torch.zeros(3)}).to_shared_memory(other_namespace)  # real, but foreign
    forged = [
        desc | {"name": "/etc_passwd"},
        desc | {"name": "/" + desc["name"][1:].replace("worldflux", "evil", 1)},
        desc | {"name": "/worldflux_" + "../" + desc["name"][len("/worldflux_") :]},
        foreign,
        desc | {"size": desc["size"] - 1},
        desc | {"size": 10**9},
        desc | {"capacity": desc["capacity"] + 8},
        desc | {"capacity": desc["capacity"] - 8, "size": desc["capacity"] - 16},
        desc | {"header_len": desc["header_len"] + 1},
        desc | {"header_len": desc["size"]},
        desc | {"generation": desc["generation"] + 1},
        desc | {"size": "12"},
    ]
    return json.dumps(forged)


def pool_producer(namespace: str, cycles: int) -> None:
    """Publish `cycles` States through one pool slot, one per ack read from stdin.

    Every 100 cycles the payload grows fourfold, so the slot moves to a fresh segment;
    otherwise it is rewritten in place. Descriptors go to stdout, one JSON line each.
    """
    with shm.SegmentPool(namespace, slots=1) as pool:
        for i in range(cycles):
            state = State({"x": torch.full((16 * 4 ** (i // 100), 3), float(i))}, {"i": i})
            print(json.dumps(pool.publish(state)), flush=True)
            if sys.stdin.readline().strip() != "ack":
                raise SystemExit(3)


if __name__ == "__main__":
    pool_producer(sys.argv[1], int(sys.argv[2]))
