"""The env copies an `EnvRunner` steps: in this process (``vector="sync"``, `LocalEnvs`) or one
per worker process (``vector="async"``, `ProcessEnvs`), behind one interface.

Both run the same per-copy operations (`advance`, `restore_or_reset`, `capture_env`), so the same
seeds give the same rows in either mode: the worker only moves where an env's code runs. In async
mode every copy's `step` runs at once (the parent sends all actions, then gathers the rows), so an
expensive env (dm_control pixels) steps up to `num_envs` times faster on as many free cores.

Exact resume is kept: a worker takes its env's snapshot (`env_snapshot.capture_env`) and restores
it in the child, so a checkpoint holds the same snapshots in both modes and a run may resume in
the other mode. Envs without a faithful snapshot restart a fresh seeded episode, as in sync mode.

A worker ignores SIGINT (the parent owns shutdown), exits when asked or when the parent's end of
its pipe closes, and an exception in a child comes back as one `EnvWorkerError` line naming the
env copy, its env and the operation; all workers are then shut down.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

import cloudpickle

from worldflux.core.exceptions import ConfigError, WorldFluxError
from worldflux.training.env_snapshot import capture_env, describe, restore_env

VECTOR_MODES = ("sync", "async")
QUERIES = ("goal_observation",)  # no-argument env methods an agent may call on a worker's env
POLL_S = 0.5  # how often a wait for a reply checks that the worker is still alive
JOIN_S = 5.0  # how long `close` waits for a worker before terminating it


class EnvWorkerError(WorldFluxError, RuntimeError):
    """An env copy in a worker process raised or died; the message names the copy and env."""


def advance(env: Any, action: Any) -> tuple[Any, Any | None]:
    """Step `env`; when that row ends the episode, also the next episode's reset row."""
    row = env.step(action)
    return row, (env.reset() if row.is_last else None)


def restore_or_reset(env: Any, snap: dict[str, Any], seed: int) -> Any | None:
    """Restore `env` from `snap` (-> None), or start a fresh episode seeded `seed` (-> its row)."""
    return None if restore_env(env, snap) else env.reset(seed=seed)


class EnvCopies(Protocol):
    """What `EnvRunner` needs of its env copies (rows are `worldflux.envs.Step`)."""

    envs: list[Any]  # the copies (or handles to them) that agent hooks receive
    observation_space: Any
    action_space: Any

    def reset(self, seeds: Sequence[int | None]) -> list[Any]: ...
    def advance(self, actions: Any) -> list[tuple[Any, Any | None]]: ...
    def capture(self) -> list[dict[str, Any]]: ...
    def restore(self, snaps: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[Any]: ...
    def close(self) -> None: ...


def make_env_copies(env_fn: Callable[[int], Any], num_envs: int, vector: str) -> EnvCopies:
    """`num_envs` copies made by `env_fn(i)`, stepped as `vector` says ("sync" or "async")."""
    if vector == "sync":
        return LocalEnvs(env_fn, num_envs)
    if vector == "async":
        return ProcessEnvs(env_fn, num_envs)
    raise ConfigError(f"env.vector: expected one of {list(VECTOR_MODES)}, got {vector!r}")


class LocalEnvs:
    """The copies in this process, stepped one after another."""

    def __init__(self, env_fn: Callable[[int], Any], num_envs: int) -> None:
        self.envs = [env_fn(i) for i in range(num_envs)]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space

    def reset(self, seeds: Sequence[int | None]) -> list[Any]:
        return [env.reset(seed=s) for env, s in zip(self.envs, seeds, strict=True)]

    def advance(self, actions: Any) -> list[tuple[Any, Any | None]]:
        return [advance(env, actions[i]) for i, env in enumerate(self.envs)]

    def capture(self) -> list[dict[str, Any]]:
        return [capture_env(env) for env in self.envs]

    def restore(self, snaps: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[Any]:
        return [
            restore_or_reset(e, s, int(x)) for e, s, x in zip(self.envs, snaps, seeds, strict=True)
        ]

    def close(self) -> None:
        for env in self.envs:
            env.close()


class EnvHandle:
    """A worker's env as agent hooks see it: its spaces, name and the `QUERIES` it answers."""

    def __init__(self, owner: ProcessEnvs, index: int, info: dict[str, Any]) -> None:
        self._owner, self._index = owner, index
        self.observation_space, self.action_space = info["spaces"]
        self.name: str = info["name"]
        self._queries: set[str] = set(info["queries"])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._queries:
            raise AttributeError(name)
        return lambda: self._owner.call(self._index, "query", name)

    def __repr__(self) -> str:
        return f"EnvHandle({self._index}: {self.name} in a worker process)"


class ProcessEnvs:
    """One worker process per copy (started with ``spawn``; `env_fn` is sent with cloudpickle,
    so a lambda will do); every operation runs in all workers at once."""

    def __init__(self, env_fn: Callable[[int], Any], num_envs: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.names = [f"env copy {i}" for i in range(num_envs)]
        self._finalizer = weakref.finalize(self, _shutdown, self.conns, self.procs)
        payload = cloudpickle.dumps(env_fn)
        for i in range(num_envs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(payload, i, child), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        infos = self._gather("start")
        self.names = [f"env copy {i} ({info['name']})" for i, info in enumerate(infos)]
        self.envs = [EnvHandle(self, i, info) for i, info in enumerate(infos)]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space

    def reset(self, seeds: Sequence[int | None]) -> list[Any]:
        return self._all("reset", [(s,) for s in seeds])

    def advance(self, actions: Any) -> list[tuple[Any, Any | None]]:
        return self._all("advance", [(actions[i],) for i in range(len(self.conns))])

    def capture(self) -> list[dict[str, Any]]:
        return self._all("capture", [() for _ in self.conns])

    def restore(self, snaps: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[Any]:
        return self._all("restore", [(s, int(x)) for s, x in zip(snaps, seeds, strict=True)])

    def call(self, index: int, op: str, *args: Any) -> Any:
        """Run `op` in worker `index` alone (used by `EnvHandle` queries)."""
        self._send(index, op, args)
        return self._check([self._receive(index, op)])[0]

    def _all(self, op: str, args: list[tuple[Any, ...]]) -> list[Any]:
        for i, a in enumerate(args):
            self._send(i, op, a)
        return self._gather(op)

    def _gather(self, op: str) -> list[Any]:
        return self._check([self._receive(i, op) for i in range(len(self.conns))])

    def _send(self, index: int, op: str, args: tuple[Any, ...]) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):  # gone: `_receive` says how
            self.conns[index].send((op, args))

    def _receive(self, index: int, op: str) -> tuple[bool, Any]:
        conn, proc = self.conns[index], self.procs[index]
        try:
            while not conn.poll(POLL_S):
                if not proc.is_alive() and not conn.poll(0):
                    return False, self._died(index, op)
            status, value = conn.recv()
        except (EOFError, OSError):
            return False, self._died(index, op)
        if status == "ok":
            return True, value
        return False, f"{self.names[index]} raised {value} (in {op})"

    def _died(self, index: int, op: str) -> str:
        self.procs[index].join(0.1)
        code = self.procs[index].exitcode
        return f"{self.names[index]}: its worker process died (exit code {code}) during {op}"

    def _check(self, replies: list[tuple[bool, Any]]) -> list[Any]:
        errors = [value for ok, value in replies if not ok]
        if errors:
            self.close()
            more = f" (and {len(errors) - 1} more env copies failed)" if len(errors) > 1 else ""
            raise EnvWorkerError(errors[0] + more)
        return [value for _, value in replies]

    def close(self) -> None:
        self._finalizer()


def _shutdown(conns: list[Connection], procs: list[Any]) -> None:
    for conn in conns:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("close", ()))
    for proc in procs:
        proc.join(JOIN_S)
        if proc.is_alive():
            proc.terminate()
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


def worker_main(payload: bytes, index: int, conn: Connection) -> None:
    """A worker process: build env copy `index`, then answer the parent's requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = None
    try:
        env = cloudpickle.loads(payload)(index)
        queries = [q for q in QUERIES if _query_layer(env, q) is not None]
        info = {"spaces": (env.observation_space, env.action_space), "name": describe(env),
                "queries": queries}  # fmt: skip
        conn.send(("ok", info))
        _serve(env, conn)
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        _reply_error(conn, err)
    finally:
        if env is not None:
            env.close()
        conn.close()


def _serve(env: Any, conn: Connection) -> None:
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if op == "close":
            return
        if op == "reset":
            value = env.reset(seed=args[0])
        elif op == "advance":
            value = advance(env, args[0])
        elif op == "capture":
            value = capture_env(env)
        elif op == "restore":
            value = restore_or_reset(env, args[0], args[1])
        elif op == "query":
            value = getattr(_query_layer(env, args[0]), args[0])()
        else:
            raise ValueError(f"op: expected a worker request, got {op!r}")
        conn.send(("ok", value))


def _query_layer(env: Any, name: str) -> Any:
    layer = env
    while not hasattr(layer, name) and hasattr(layer, "env"):
        layer = layer.env
    return layer if hasattr(layer, name) else None


def _reply_error(conn: Connection, err: BaseException) -> None:
    line = " ".join(str(err).split())
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send(("error", f"{type(err).__name__}: {line}" if line else type(err).__name__))
