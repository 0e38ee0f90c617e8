"""`CollectorPool`: N collector processes feeding the learner through shared-memory States.

Usage (the learner's loop; `worldflux.distributed.collector_source.CollectorSource` is the
`Trainer`'s)::

    pool = CollectorPool(env_fn, policy_fn, CollectorConfig(num_collectors=2), weights=policy)
    with pool:                                   # Ctrl-C or an error still cleans up
        while training:
            for chunk in pool.poll(copy=False):
                add_chunk(replay, chunk)         # rows -> Replay.add, the slot freed
            ... update ...
            pool.publish_weights(policy)         # a new policy version

Each collector is restarted when it dies (its shm namespace is unlinked first), up to
`max_restarts` times. Policy weights travel as a versioned `State` of parameters in a small set
of learner-owned segments; every row records the version that chose its action. Single-process
training never imports this module.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import pickle
import re
import secrets
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
from torch import nn

from worldflux.core.exceptions import ConfigError, SharedMemoryError, WorldFluxError
from worldflux.distributed import transport
from worldflux.distributed.weights import WeightBroadcaster
from worldflux.distributed.worker import CollectorPolicy, WorkerSpec, collector_main
from worldflux.envs.base import Env

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


class CollectorError(WorldFluxError, RuntimeError):
    """A collector failed more often than allowed, or did not answer in time."""


@dataclass
class CollectorConfig:
    """How many collectors, how they batch their output and how weights flow back."""

    num_collectors: int = 2  # collector processes
    envs_per_collector: int = 1  # env copies each process steps in turn
    chunk_len: int = 16  # rows per env copy in one published chunk
    pool_slots: int = 4  # shm segments per collector, reused; bounds rows in flight
    start_method: str = "spawn"  # "spawn" (portable) or "fork"
    seed: int = 0  # collector i, generation g seeds envs from SeedSequence([seed, i, g])
    explore: bool = True  # passed to policy.act
    weight_sync_every: int = 1  # the learner publishes weights every k-th update
    weight_slots: int = 3  # learner-side segments for weight versions
    max_restarts: int = 3  # restarts per collector before CollectorError
    timeout_s: float = 60.0  # limit for a collector to start, stop or take weights
    torch_threads: int = 1  # torch threads per collector process
    namespace: str = ""  # shm name prefix; "" picks "wf<pid>x<random>"

    def __post_init__(self) -> None:
        for name in ("num_collectors", "envs_per_collector", "chunk_len", "weight_sync_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {getattr(self, name)}")
        for name, low in (("pool_slots", 1), ("weight_slots", 2), ("torch_threads", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name}: expected an int >= {low}, got {getattr(self, name)}")
        if self.start_method not in ("spawn", "fork", "forkserver"):
            raise ConfigError(
                f"start_method: expected 'spawn', 'fork' or 'forkserver', got {self.start_method!r}"
            )
        if self.max_restarts < 0 or self.timeout_s <= 0:
            raise ConfigError(
                f"max_restarts >= 0 and timeout_s > 0 expected, got {self.max_restarts}, "
                f"{self.timeout_s}"
            )
        if self.namespace and not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigError(
                f"namespace: expected 1-40 characters of [A-Za-z0-9._-] starting alphanumeric "
                f"(suffixes are appended), got {self.namespace!r}"
            )


@dataclass
class _Slot:
    """Learner-side record of collector index i."""

    process: Any = None  # multiprocessing.Process of the current generation
    conn: Connection | None = None
    receiver: transport.ChunkReceiver | None = None
    generation: int = -1
    restarts: int = 0
    chunks: int = 0
    loaded: int = 0  # newest policy version the current process reported loading
    ready: bool = False  # the current process said "ready" (it built its envs and policy)
    traceback: str = ""  # what the current process reported before dying
    errors: list[str] = field(default_factory=list)  # one line per dead generation


class CollectorPool:
    """Starts, watches, restarts and stops the collector processes (see the module docstring).

    `env_fn(i)` builds env copy i (the run's convention, `worldflux.training.runner.EnvFn`;
    collector c steps copies ``c * envs_per_collector + j``) and `policy_fn()` the acting policy
    inside each collector; both
    must pickle under ``spawn`` (module-level callables or `functools.partial` of them).
    `weights` (optional) is published as version 1 before the collectors start.
    """

    def __init__(
        self,
        env_fn: Callable[[int], Env],
        policy_fn: Callable[[], CollectorPolicy],
        config: CollectorConfig | None = None,
        weights: nn.Module | None = None,
    ) -> None:
        self.config = config or CollectorConfig()
        self.env_fn, self.policy_fn = env_fn, policy_fn
        self.namespace = self.config.namespace or f"wf{os.getpid()}x{secrets.token_hex(3)}"
        self.ctx = mp.get_context(self.config.start_method)
        self.slots = [_Slot() for _ in range(self.config.num_collectors)]
        self.weights = WeightBroadcaster(f"{self.namespace}-w", self.config.weight_slots)
        self._initial = weights
        self._pending: list[transport.Chunk] = []
        self._calls = 0
        self.started = self.closed = False
        self.env_steps = 0
        self._atexit = weakref.WeakMethod(self.close)
        atexit.register(_close_ref, self._atexit)

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> CollectorPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> CollectorPool:
        """Publish the initial weights (if any) and start every collector."""
        if self.started:
            return self
        self.started = True
        transport.cleanup_orphans()
        try:
            if self._initial is not None:
                self.weights.publish(self._initial, live=[])
            for i in range(self.config.num_collectors):
                self._spawn(i)
        except BaseException:
            self.close()
            raise
        return self

    def collector_namespace(self, index: int, generation: int) -> str:
        """Shm namespace of collector `index` in its `generation`."""
        return f"{self.namespace}-c{index}g{generation}"

    def _spawn(self, i: int) -> None:
        cfg, slot = self.config, self.slots[i]
        slot.generation += 1
        seed = int(np.random.SeedSequence([cfg.seed, i, slot.generation]).generate_state(1)[0])
        spec = WorkerSpec(
            index=i,
            generation=slot.generation,
            namespace=self.collector_namespace(i, slot.generation),
            env_fn=self.env_fn,
            policy_fn=self.policy_fn,
            num_envs=cfg.envs_per_collector,
            chunk_len=cfg.chunk_len,
            slots=cfg.pool_slots,
            seed=seed,
            explore=cfg.explore,
            threads=cfg.torch_threads,
            weights=self.weights.latest_message(),
            parent_pid=os.getpid(),
        )
        ours, theirs = self.ctx.Pipe(duplex=True)
        # Pickled here, unpickled inside the child's error handler (see `collector_main`).
        payload = spec if cfg.start_method == "fork" else pickle.dumps(spec)
        slot.ready, slot.traceback = False, ""
        proc = self.ctx.Process(  # type: ignore[attr-defined]
            target=collector_main,
            args=(payload, theirs),
            name=f"worldflux-collector-{i}",
            daemon=True,
        )
        proc.start()
        theirs.close()
        E = cfg.envs_per_collector
        env_ids = np.arange(i * E, (i + 1) * E)
        slot.process, slot.conn = proc, ours
        slot.receiver = transport.ChunkReceiver(
            ours, i, slot.generation, env_ids, cfg.pool_slots, spec.namespace
        )
        self.weights.joined(i)

    def close(self) -> None:
        """Stop every collector, unmap what the learner holds and unlink every segment."""
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            if slot.conn is not None:
                with contextlib.suppress(OSError):
                    transport.send(slot.conn, {"type": "stop"})
        deadline = time.monotonic() + min(self.config.timeout_s, 10.0)
        for i, slot in enumerate(self.slots):
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(5.0)
            self._forget(i)
        for chunk in self._pending:
            chunk.release()
        self._pending.clear()
        self.weights.close()

    def _forget(self, i: int) -> None:
        """Drop collector i's process: unmap held chunks, close its pipe, unlink its segments."""
        slot = self.slots[i]
        if slot.receiver is not None:
            slot.receiver.alive = False
            slot.receiver.release_all()
        if slot.conn is not None:
            slot.conn.close()
        if slot.generation >= 0:
            transport.cleanup(self.collector_namespace(i, slot.generation))
        self.weights.left(i)
        slot.process = slot.conn = slot.receiver = None

    def _restart(self, i: int) -> None:
        slot = self.slots[i]
        if slot.process is not None:
            slot.process.join(1.0)
            if slot.process.is_alive():  # its pipe broke but it lingers
                slot.process.kill()
                slot.process.join(5.0)
            slot.errors.append(self._death(slot, slot.process.exitcode))
        self._forget(i)
        slot.restarts += 1
        if slot.restarts > self.config.max_restarts:
            self.close()
            raise CollectorError(
                f"collector {i} died {slot.restarts} times (max_restarts="
                f"{self.config.max_restarts}); the last one: "
                f"{slot.errors[-1] if slot.errors else 'no details'}"
            )
        self._spawn(i)

    @staticmethod
    def _death(slot: _Slot, code: int | None) -> str:
        """One line (plus its traceback) saying how a collector generation ended."""
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        when = "" if slot.ready else " while starting (before it built its envs and policy)"
        text = f"generation {slot.generation} {how}{when}"
        if slot.traceback:
            return f"{text}; its traceback:\n{slot.traceback}"
        return f"{text}; it reported no error (see its stderr)"

    # --- receiving ------------------------------------------------------------------------------

    def poll(self, timeout: float = 1.0, copy: bool = True) -> list[transport.Chunk]:
        """Chunks that arrived within `timeout` seconds (restarting dead collectors on the way).

        With `copy` (default) each chunk owns its tensors and its slot is already acked; with
        ``copy=False`` the tensors view shared memory and the caller must `release()` them.
        """
        if not self.started or self.closed:
            raise CollectorError("poll: the pool is not running; call start() (or use `with`)")
        self._drain(timeout, copy)
        out, self._pending = self._pending, []
        self.env_steps += sum(c.num_steps for c in out)
        return out

    def _drain(self, timeout: float, copy: bool) -> None:
        conns = {s.conn: i for i, s in enumerate(self.slots) if s.conn is not None}
        sentinels = {s.process.sentinel: i for i, s in enumerate(self.slots) if s.process}
        ready = wait(list(conns) + list(sentinels), timeout)
        dead = {sentinels[r] for r in ready if r in sentinels}
        for r in ready:
            if r in conns and conns[r] not in dead and not self._read(conns[r], copy):
                dead.add(conns[r])
        for i in sorted(dead):
            self._read(i, copy)  # whatever it sent before dying, in order
            self._restart(i)

    def _read(self, i: int, copy: bool) -> bool:
        """Handle every message waiting from collector i; False when its pipe is closed."""
        slot = self.slots[i]
        conn, receiver = slot.conn, slot.receiver
        if conn is None or receiver is None:
            return False
        try:
            while conn.poll():
                msg = transport.recv(conn)
                kind = msg["type"]
                if kind == "chunk":
                    try:
                        self._pending.append(receiver.receive(msg, copy))
                    except SharedMemoryError:  # a dying collector already unlinked it
                        continue
                    slot.chunks += 1
                elif kind in ("ready", "weights_loaded"):
                    slot.ready = True
                    slot.loaded = int(msg.get("version", 0))
                    self.weights.acked(i, slot.loaded)
                elif kind == "error":
                    slot.traceback = str(msg.get("message", ""))
        except (EOFError, OSError):
            return False
        return True

    # --- weights --------------------------------------------------------------------------------

    def publish_weights(self, module: nn.Module) -> int:
        """Broadcast `module`'s state dict as the next version; returns that version.

        Waits (up to `timeout_s`) while every weight slot still holds a version some collector
        has not taken yet.
        """
        deadline = time.monotonic() + self.config.timeout_s
        live = [i for i, s in enumerate(self.slots) if s.conn is not None]
        while not self.weights.can_publish(live):
            if time.monotonic() > deadline:
                raise CollectorError(
                    f"publish_weights: collectors did not load earlier versions within "
                    f"{self.config.timeout_s}s; acked: {self.weights.acks}"
                )
            self._drain(0.05, copy=True)
            live = [i for i, s in enumerate(self.slots) if s.conn is not None]
        msg = self.weights.publish(module, live)
        for i in live:
            conn = self.slots[i].conn
            if conn is not None:
                # If it died, the next poll restarts it with the latest weights.
                with contextlib.suppress(OSError):
                    transport.send(conn, msg)
        return int(msg["version"])

    @property
    def version(self) -> int:
        """The latest published policy version (0 before any)."""
        return self.weights.version

    def stats(self) -> dict[str, Any]:
        """Per collector: chunks received, restarts, generation and newest loaded version."""
        return {
            "env_steps": self.env_steps,
            "version": self.version,
            "collectors": [
                {
                    "chunks": s.chunks,
                    "restarts": s.restarts,
                    "generation": s.generation,
                    "loaded_version": s.loaded,
                }
                for s in self.slots
            ],
        }

    def pid(self, index: int) -> int | None:
        """OS pid of collector `index`'s current process."""
        proc = self.slots[index].process
        return None if proc is None else int(proc.pid)


def _close_ref(ref: weakref.WeakMethod) -> None:
    method = ref()
    if method is not None:
        method()
