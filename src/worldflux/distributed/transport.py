"""Moving collector output to the learner: JSON messages over pipes, State payloads in shm.

Nothing here pickles: a message is a small JSON object sent with `Connection.send_bytes`; the
tensors travel in one POSIX shared-memory segment per `State` (``State.to_shared_memory``),
named by the descriptor inside the message.

Producer side (a collector) publishes each chunk into one of `slots` segments that it reuses
round-robin (`SlotPublisher`); the learner attaches the descriptor (`ChunkReceiver`), and when
it is done with the chunk it sends ``{"type": "ack", "slot": s}`` so the collector may overwrite
that segment. A collector therefore never has more than `slots` chunks in flight, which bounds
shared memory and applies back-pressure when the learner falls behind.

A chunk is a `State` whose tensors are ``(E, T, ...)`` for the collector's E env copies and T
steps, in the row convention of `worldflux.core.batch.Batch`:

==================  ==========================================================================
key                 meaning (shape)
==================  ==========================================================================
obs                 the observation (E, T, *shape) of a Box space (`obs_entries`)
obs/<field>         each field (E, T, *shape) of a Dict space's observation
action              a_{t-1} that led to o_t, model format (E, T, A) float32
reward              reward on arriving at o_t (E, T) float32
is_first            reset row (E, T) bool; ``is_terminal``, ``is_last`` likewise
policy_version      version of the policy that chose this row's action (E, T) int64
env_step            rows this env copy has produced before this one (E, T) int64
agent/<key>         the agent's filtered State after o_t (E, T, ...), recurrent agents only
==================  ==========================================================================
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from operator import itemgetter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from worldflux.core.exceptions import StateFormatError
from worldflux.core.serialization import shm
from worldflux.core.spec import map_obs
from worldflux.core.state import State
from worldflux.envs.base import StepBatch

FLAGS = ("is_first", "is_terminal", "is_last")
MAX_MESSAGE_BYTES = 1 << 20


# --- messages -----------------------------------------------------------------------------------


def send(conn: Connection, msg: Mapping[str, Any]) -> None:
    """Send a JSON object (no pickle)."""
    conn.send_bytes(json.dumps(msg, separators=(",", ":")).encode())


def recv(conn: Connection) -> dict[str, Any]:
    """Receive one JSON object sent by `send`; raises `StateFormatError` on anything else."""
    raw = conn.recv_bytes(MAX_MESSAGE_BYTES)
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFormatError(f"collector message: expected JSON, got {raw[:80]!r}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise StateFormatError(f"collector message: expected an object with 'type', got {msg!r}")
    return msg


def _field(msg: Mapping[str, Any], key: str, kind: type) -> Any:
    value = msg.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise StateFormatError(
            f"collector message {msg.get('type')!r}: field {key!r} must be {kind.__name__}, "
            f"got {value!r}"
        )
    return value


# --- shared-memory glue (the only place that touches the State shm API) ------------------------


def attach(descriptor: Mapping[str, Any], copy: bool, namespace: str | None = None) -> State:
    """The State a descriptor names (checked to lie in `namespace`); views unless `copy`.

    Raises `SharedMemoryError` when the segment is gone and `StateFormatError` when the
    descriptor is malformed or stale.
    """
    return State.from_shared_memory(dict(descriptor), copy=copy, namespace=namespace)


def detach(state: State) -> None:
    """Drop this process's mapping of a zero-copy State (the producer owns the segment)."""
    state.close_shared_memory(unlink=False)


def cleanup(namespace: str) -> int:
    """Unlink every segment left under `namespace` (one we own exclusively); returns the count."""
    return shm.cleanup_namespace(namespace, include_live=True)


_POOL_SEGMENT = re.compile(r"worldflux_(wf[0-9]+x[0-9a-f]{6}(?:-[A-Za-z0-9]+)?)_")


def cleanup_orphans() -> int:
    """Unlink segments of earlier collector pools whose creating process is dead.

    Covers a learner killed with SIGKILL (its weight segments) and collectors that died with
    it; only namespaces of the default ``wf<pid>x<hex>`` form are swept.
    """
    try:
        entries = os.listdir(shm.SHM_DIR)
    except FileNotFoundError:  # no /dev/shm (macOS): nothing we can list
        return 0
    namespaces = {m.group(1) for e in entries if (m := _POOL_SEGMENT.match(e))}
    return sum(shm.cleanup_namespace(ns) for ns in sorted(namespaces))


class SlotPublisher:
    """Producer side: `slots` reusable segments under `namespace`, freed by learner acks."""

    def __init__(self, namespace: str, slots: int) -> None:
        self.namespace = namespace
        self.pool = shm.SegmentPool(namespace, slots)
        self.free: deque[int] = deque(range(slots))

    def publish(self, state: State) -> tuple[int, dict[str, Any]]:
        """Copy `state` into a free slot; returns (slot, descriptor). Needs a free slot."""
        slot = self.free.popleft()
        return slot, self.publish_at(slot, state)

    def publish_at(self, slot: int, state: State) -> dict[str, Any]:
        """Copy `state` into `slot` (the caller knows nobody reads it); returns the descriptor."""
        return dict(self.pool.publish(state, slot=slot))

    def release(self, slot: int) -> None:
        """The learner is done with `slot`."""
        if slot in self.free:
            raise StateFormatError(f"ack: slot {slot} of {self.namespace!r} was not in flight")
        self.free.append(slot)

    def close(self) -> None:
        """Unlink every segment of the pool."""
        self.pool.close()


# --- learner side ---------------------------------------------------------------------------------


@dataclass
class Chunk:
    """T steps of a collector's E env copies; `state` tensors are (E, T, ...).

    With ``copy=False`` the tensors are views of the collector's segment: call `release` (or use
    ``with chunk:``) once they are copied out; until then the collector cannot reuse the slot.
    """

    collector: int  # collector index in [0, num_collectors)
    generation: int  # restarts of that collector before this chunk's process
    seq: int  # chunk number within this generation, from 0 without gaps
    slot: int  # the producer's segment slot
    state: State
    env_ids: np.ndarray  # (E,) replay stream of each env copy
    _receiver: ChunkReceiver | None = field(default=None, repr=False)

    @property
    def num_steps(self) -> int:
        """E * T rows."""
        r = self.state.tensors["reward"]
        return int(r.shape[0] * r.shape[1])

    @property
    def policy_versions(self) -> Tensor:
        """(E, T) int64 version of the policy behind each row's action."""
        return self.state.tensors["policy_version"]

    def release(self) -> None:
        """Unmap (zero-copy) and tell the collector its slot is free. Idempotent."""
        if self._receiver is not None:
            self._receiver.release(self)
            self._receiver = None

    def __enter__(self) -> Chunk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def step_batches(self, infos: bool = False) -> list[StepBatch]:
        """The T rows as `StepBatch` (E rows each) for ``Replay.add(rows, env_ids)``.

        Rows are views of one numpy copy of the chunk, so they stay valid after `release`.
        With `infos`, each row's ``infos`` carry ``policy_version`` and ``env_step``.
        """
        t = {k: v.numpy().copy() for k, v in self.state.tensors.items()}
        obs = obs_from_entries(t)  # (E, T, ...) in the env's form
        out = []
        for i in range(int(t["reward"].shape[1])):
            row_infos: list[dict[str, Any]] = []
            if infos:
                versions, steps = t["policy_version"][:, i].tolist(), t["env_step"][:, i].tolist()
                row_infos = [
                    {"policy_version": v, "env_step": s}
                    for v, s in zip(versions, steps, strict=True)
                ]
            out.append(
                StepBatch(
                    obs=map_obs(
                        itemgetter((slice(None), i)), obs
                    ),  # [:, i]: (E, T, ...) -> (E, ...)
                    action=t["action"][:, i],
                    reward=t["reward"][:, i],
                    is_first=t["is_first"][:, i],
                    is_terminal=t["is_terminal"][:, i],
                    is_last=t["is_last"][:, i],
                    infos=row_infos,
                )
            )
        return out


def obs_entries(obs: Any) -> dict[str, Any]:
    """A chunk's entries for an observation in the env's form: ``obs`` for one array,
    ``obs/<field>`` for each field of a dict (inverse: `obs_from_entries`)."""
    if isinstance(obs, Mapping):
        return {f"obs/{k}": v for k, v in obs.items()}
    return {"obs": obs}


def obs_from_entries(entries: Mapping[str, Any]) -> Any:
    """The observation in the env's form from a chunk's entries (see `obs_entries`)."""
    if "obs" in entries:
        return entries["obs"]
    return {k[4:]: v for k, v in entries.items() if k.startswith("obs/")}


class ChunkReceiver:
    """Learner side of one collector process: checks order, attaches, acks released slots."""

    def __init__(
        self,
        conn: Connection,
        collector: int,
        generation: int,
        env_ids: np.ndarray,
        slots: int,
        namespace: str,
    ) -> None:
        self.conn, self.collector, self.generation = conn, collector, generation
        self.namespace = namespace
        self.env_ids, self.slots = env_ids, slots
        self.next_seq = 0
        self.held: dict[int, Chunk] = {}  # zero-copy chunks not yet released, by slot
        self.alive = True

    def receive(self, msg: Mapping[str, Any], copy: bool) -> Chunk:
        """Turn a ``chunk`` message into a `Chunk`; with `copy` the slot is acked at once."""
        seq, slot = _field(msg, "seq", int), _field(msg, "slot", int)
        desc = _field(msg, "desc", dict)
        if seq != self.next_seq:
            raise StateFormatError(
                f"collector {self.collector}: chunk seq {seq} arrived, expected {self.next_seq}"
            )
        if not 0 <= slot < self.slots or slot in self.held:
            raise StateFormatError(
                f"collector {self.collector}: slot {slot} is out of range or still held"
            )
        self.next_seq += 1
        state = attach(desc, copy=copy, namespace=self.namespace)
        chunk = Chunk(self.collector, self.generation, seq, slot, state, self.env_ids, self)
        if copy:
            self._ack(slot)
            chunk._receiver = None
        else:
            self.held[slot] = chunk
        return chunk

    def release(self, chunk: Chunk) -> None:
        """Unmap a zero-copy chunk and ack its slot (no ack once the collector is gone)."""
        if self.held.pop(chunk.slot, None) is None:
            return
        detach(chunk.state)
        self._ack(chunk.slot)

    def release_all(self) -> None:
        """Unmap everything still held (on shutdown or when the collector died)."""
        for chunk in list(self.held.values()):
            self.release(chunk)

    def _ack(self, slot: int) -> None:
        if not self.alive:
            return
        try:
            send(self.conn, {"type": "ack", "slot": slot})
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.alive = False


# --- policy weights as a State ------------------------------------------------------------------


def weights_state(module: nn.Module, version: int) -> State:
    """A State of `module`'s parameters and buffers, each as (1, *shape) (batch of one)."""
    tensors = {k: v.detach().cpu().unsqueeze(0) for k, v in module.state_dict().items()}
    return State(tensors, {"policy_version": version})


def load_weights(module: nn.Module, state: State) -> None:
    """Copy a `weights_state` into `module` (shapes and keys must match exactly)."""
    with torch.no_grad():
        module.load_state_dict({k: v[0] for k, v in state.tensors.items()}, strict=True)
