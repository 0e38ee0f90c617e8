"""The collector process: step E env copies with the current policy, publish chunks of T rows.

Runs under ``spawn`` or ``fork``. It ignores SIGINT (the learner owns shutdown), exits on a
``stop`` message or when the learner's end of the pipe closes, and unlinks its own segments on
the way out. See `worldflux.distributed.transport` for the chunk layout and the messages.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from worldflux.core.exceptions import SharedMemoryError
from worldflux.core.spec import Obs, map_obs
from worldflux.core.state import State
from worldflux.distributed import transport
from worldflux.envs.base import Env, StepBatch
from worldflux.envs.vector import VectorEnv


class CollectorPolicy(Protocol):
    """What a collector acts with (the `Agent.act` contract, plus the weights to sync)."""

    def act(
        self, obs: Obs, state: State | None, *, explore: bool, is_first: Tensor
    ) -> tuple[Tensor, State | None]:
        """Actions (E, A) in model format for observations in the env's form (a (E, ...)
        Tensor, or a dict of them); the new acting State."""
        ...

    def acting_module(self) -> nn.Module | None:
        """The module whose weights the learner broadcasts (None: nothing to sync)."""
        ...


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one collector process needs; picklable for ``spawn``."""

    index: int  # collector index
    generation: int  # how many times this index was restarted
    namespace: str  # shm namespace of this process's segments
    env_fn: Callable[[int], Env]  # copy index -> one env copy (module-level callable or partial)
    policy_fn: Callable[[], CollectorPolicy]  # builds the acting policy
    num_envs: int  # env copies stepped in this process
    chunk_len: int  # rows per env in one published chunk
    slots: int  # reusable shm segments
    seed: int  # env copy j resets with seed + j; torch RNG seeded with it
    explore: bool  # passed to policy.act
    threads: int  # torch intra-op threads
    weights: dict[str, Any] | None  # the latest ``weights`` message at spawn time
    parent_pid: int  # the learner; when it vanishes (even SIGKILL) the collector exits


class _TerminatedError(Exception):
    """SIGTERM arrived (e.g. `Process.terminate`): stop and clean up like on ``stop``."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _TerminatedError


def collector_main(spec: WorkerSpec | bytes, conn: Connection) -> None:
    """Process entry point.

    Under ``spawn``/``forkserver`` the learner passes `spec` pickled (bytes) so that unpickling
    the factories happens here, inside the error handler: whatever fails from the first line on
    (an env or policy factory that cannot be imported or raises, a bad config) reaches the
    learner as an ``error`` message with its traceback, not just as an exit code.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collector: _Collector | None = None
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        if isinstance(spec, bytes):
            spec = pickle.loads(spec)  # written by the learner that started us
        assert isinstance(spec, WorkerSpec)
        torch.set_num_threads(spec.threads)
        torch.manual_seed(spec.seed)
        collector = _Collector(spec, conn)
        collector.run()
    except (EOFError, BrokenPipeError, ConnectionResetError, _TerminatedError):
        pass  # the learner is gone or asked us to end: just clean up
    except BaseException:
        with contextlib.suppress(OSError):
            transport.send(conn, {"type": "error", "message": traceback.format_exc()[-4000:]})
        raise
    finally:
        if collector is not None:
            collector.close()
    # Everything this process owns is released; skip interpreter teardown (torch's takes
    # seconds under `spawn` on a loaded machine, and `fork` children skip it anyway).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Collector:
    def __init__(self, spec: WorkerSpec, conn: Connection) -> None:
        self.spec, self.conn = spec, conn
        self.publisher: transport.SlotPublisher | None = None
        first = spec.index * spec.num_envs  # copy j of collector c is copy c * num_envs + j
        self.env = VectorEnv(
            [functools.partial(spec.env_fn, first + j) for j in range(spec.num_envs)]
        )
        self.policy = spec.policy_fn()
        # the policy's optional `on_episode_start(env_ids, envs)` hook (`Agent`'s): told of new
        # episodes, and of all envs after new weights (a goal is embedded with the encoder)
        self.on_episode_start = getattr(self.policy, "on_episode_start", None)
        self.weights_changed = True
        self.version = 0
        if spec.weights is not None:
            self._load_weights(spec.weights)
        self.publisher = transport.SlotPublisher(spec.namespace, spec.slots)
        self.buffers: dict[str, Tensor] = {}
        self.env_step = np.zeros(spec.num_envs, np.int64)
        self.seq = 0
        self.running = True

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.env.close()

    def run(self) -> None:
        transport.send(self.conn, {"type": "ready", "version": self.version})
        rows = self.env.reset(seed=self.spec.seed)
        agent_state: State | None = None
        act_version, t = self.version, 0
        while self.running:
            self._check_parent()
            self._handle_messages(block=False)
            obs = rows_obs(rows)
            is_first = torch.from_numpy(rows.is_first)
            if self.on_episode_start is not None and (self.weights_changed or rows.is_first.any()):
                started = np.ones_like(rows.is_first) if self.weights_changed else rows.is_first
                self.on_episode_start(np.flatnonzero(started).tolist(), self.env.envs)
                self.weights_changed = False
            with torch.no_grad():
                action, agent_state = self.policy.act(
                    obs, agent_state, explore=self.spec.explore, is_first=is_first
                )
            # Row t holds a_{t-1}: the policy version that chose it, or the current one on resets.
            version = np.where(rows.is_first, self.version, act_version)
            self._record(t, rows, version, agent_state)
            act_version, t = self.version, t + 1
            if t == self.spec.chunk_len:
                self._publish()
                t = 0
            rows = self.env.step(action)

    def _record(
        self, t: int, rows: StepBatch, version: np.ndarray, agent_state: State | None
    ) -> None:
        values = transport.obs_entries(rows_obs(rows))
        values["action"] = torch.from_numpy(np.asarray(rows.action, np.float32))
        values["reward"] = torch.from_numpy(np.asarray(rows.reward, np.float32))
        for name in transport.FLAGS:
            values[name] = torch.from_numpy(np.asarray(getattr(rows, name), bool))
        values["policy_version"] = torch.from_numpy(version.astype(np.int64))
        values["env_step"] = torch.from_numpy(self.env_step.copy())
        if agent_state is not None:
            values.update({f"agent/{k}": v.detach().cpu() for k, v in agent_state.tensors.items()})
        self.env_step += 1
        if not self.buffers:  # (E, ...) -> buffers (E, T, ...), allocated once
            E, T = self.spec.num_envs, self.spec.chunk_len
            self.buffers = {
                k: torch.empty((E, T, *v.shape[1:]), dtype=v.dtype) for k, v in values.items()
            }
        for k, v in values.items():
            self.buffers[k][:, t] = v

    def _publish(self) -> None:
        assert self.publisher is not None
        while not self.publisher.free:  # back-pressure: wait for the learner to ack a slot
            self._handle_messages(block=True)
            if not self.running:
                return
        meta = {"collector": self.spec.index, "generation": self.spec.generation, "seq": self.seq}
        slot, desc = self.publisher.publish(State(self.buffers, meta))
        transport.send(self.conn, {"type": "chunk", "seq": self.seq, "slot": slot, "desc": desc})
        self.seq += 1

    def _check_parent(self) -> None:
        # Under fork, sibling collectors inherit the learner's pipe ends, so a dead learner
        # does not always show up as EOF; being re-parented always does.
        if os.getppid() != self.spec.parent_pid:
            raise EOFError("the learner process is gone")

    def _handle_messages(self, block: bool) -> None:
        while block and not self.conn.poll(1.0):
            self._check_parent()
        while self.running and self.conn.poll():
            msg = transport.recv(self.conn)
            kind = msg["type"]
            if kind == "ack":
                assert self.publisher is not None
                self.publisher.release(int(msg["slot"]))
            elif kind == "weights":
                self._load_weights(msg)
            elif kind == "stop":
                self.running = False

    def _load_weights(self, msg: dict[str, Any]) -> None:
        module = self.policy.acting_module()
        version = int(msg["version"])
        if module is not None:
            try:
                state = transport.attach(msg["desc"], copy=False)
            except SharedMemoryError:
                return  # superseded and already unlinked; a newer version is on its way
            try:
                transport.load_weights(module, state)
            finally:
                transport.detach(state)
            self.weights_changed = True
        self.version = version
        transport.send(self.conn, {"type": "weights_loaded", "version": version})


def rows_obs(rows: StepBatch) -> Obs:
    """StepBatch obs (an array or a dict of arrays, (E, ...)) as tensors of the same form."""
    return map_obs(lambda v: torch.from_numpy(np.ascontiguousarray(v)), rows.obs)
