"""Collector throughput: env steps/s with 1, 2 and 4 collector processes vs one process.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collectors_bench.py [--seconds 5] [--env ID]
Same env (CartPole-v1 by default) and the same policy (a 2x64 MLP, sampled) everywhere. The
single-process baseline runs exactly the collector's loop (act, step, write the row into the
chunk buffers) without publishing; the multi-process runs count rows the learner received
(attach + copy out, then ack). Also times the pieces of the per-chunk overhead. Writes
benchmarks/results/collectors_bench.json and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from multiprocessing import Pipe
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from worldflux.agents import make_agent  # noqa: E402
from worldflux.core.serialization import shm  # noqa: E402
from worldflux.core.state import State  # noqa: E402
from worldflux.data.replay import Replay  # noqa: E402
from worldflux.distributed import transport  # noqa: E402
from worldflux.distributed.collectors import CollectorConfig, CollectorPool  # noqa: E402
from worldflux.distributed.policies import AgentPolicy, MLPPolicy  # noqa: E402
from worldflux.distributed.worker import rows_obs  # noqa: E402
from worldflux.envs import VectorEnv, make_env, make_env_fn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def factories(env_id: str, agent: str = "") -> tuple[functools.partial, functools.partial]:
    """Env factory and policy factory: the MLP, or `agent` ("family:preset") via AgentPolicy."""
    env = make_env(env_id)
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    env_fn = make_env_fn(env_id)
    if agent:
        options = {"act": "policy"} if agent.startswith("tdmpc2") else {}
        agent_fn = functools.partial(
            make_agent, agent, obs_space, action_space, 0, "cpu", None, options
        )
        return env_fn, functools.partial(AgentPolicy, agent_fn)
    obs_dim, n = int(obs_space.shape[0]), int(action_space.n)  # type: ignore[index, attr-defined]
    return env_fn, functools.partial(MLPPolicy, obs_dim, n, True)


def single_process(env_fn, policy_fn, envs: int, chunk: int, seconds: float) -> dict:  # noqa: ANN001
    """The collector loop in the learner's own process, without shared memory."""
    venv, policy = VectorEnv([functools.partial(env_fn, i) for i in range(envs)]), policy_fn()
    rows, buf, steps, t, state = venv.reset(seed=0), None, 0, 0, None
    t_act = t_env = t_rec = 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        with torch.no_grad():
            first = torch.from_numpy(rows.is_first)
            action, state = policy.act(rows_obs(rows), state, explore=True, is_first=first)
        t1 = time.perf_counter()
        obs = rows_obs(rows)  # a Box space: one (E, D) Tensor
        if buf is None:
            buf = torch.empty((envs, chunk, *obs.shape[1:]))
        buf[:, t] = obs
        t, steps = (t + 1) % chunk, steps + envs
        t2 = time.perf_counter()
        rows = venv.step(action)
        t3 = time.perf_counter()
        t_act, t_rec, t_env = t_act + t1 - t0, t_rec + t2 - t1, t_env + t3 - t2
    wall = time.perf_counter() - start
    per = 1e6 / steps  # seconds in total -> microseconds per row
    return {
        "steps_per_s": steps / wall,
        "us_per_row": {"act": t_act * per, "env": t_env * per, "record": t_rec * per},
    }


def multi_process(env_fn, policy_fn, n: int, envs: int, chunk: int, seconds: float, method: str):  # noqa: ANN001, ANN201
    cfg = CollectorConfig(
        num_collectors=n, envs_per_collector=envs, chunk_len=chunk, start_method=method,
        namespace=f"bench{n}{method[0]}",
    )  # fmt: skip
    with CollectorPool(env_fn, policy_fn, cfg) as pool:
        t0 = time.perf_counter()
        while not all(s["chunks"] > 0 for s in pool.stats()["collectors"]):
            pool.poll(0.5)
        startup = time.perf_counter() - t0
        got, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            got += sum(c.num_steps for c in pool.poll(0.1, copy=True))
        wall = time.perf_counter() - start
    return {"steps_per_s": got / wall, "startup_s": startup}


def chunk_state(env_fn, envs: int, chunk: int) -> State:  # noqa: ANN001
    """A chunk shaped exactly like the collectors' (random contents)."""
    env = env_fn(0)
    d, a = int(env.observation_space.shape[0]), int(env.action_space.n)
    E, T = envs, chunk
    t = {
        "obs": torch.randn(E, T, d),
        "action": torch.zeros(E, T, a),
        "reward": torch.zeros(E, T),
        "policy_version": torch.zeros(E, T, dtype=torch.int64),
        "env_step": torch.zeros(E, T, dtype=torch.int64),
    }
    t.update({k: torch.zeros(E, T, dtype=torch.bool) for k in transport.FLAGS})
    t["is_first"][:, 0] = True
    return State(t, {"collector": 0, "generation": 0, "seq": 0})


def median_us(fn, repeats: int = 300) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def overhead(env_fn, envs: int, chunk: int) -> dict:  # noqa: ANN001
    """Per-chunk costs of the shm path, each timed alone (median, microseconds)."""
    state = chunk_state(env_fn, envs, chunk)
    pool = shm.SegmentPool("benchov", 1)
    desc = pool.publish(state, slot=0)
    a, b = Pipe()
    msg = {"type": "chunk", "seq": 0, "slot": 0, "desc": desc}

    def roundtrip() -> None:
        transport.send(a, msg)
        transport.recv(b)

    def attach_zero_copy() -> None:
        transport.detach(transport.attach(desc, copy=False))

    out = {
        "chunk_bytes": desc["size"],
        "publish_us": median_us(lambda: pool.publish(state, slot=0)),
        "message_us": median_us(roundtrip),
        "attach_copy_us": 0.0,
        "attach_zero_copy_us": 0.0,
        "replay_add_us": 0.0,
        "step_batches_us": median_us(
            lambda: transport.Chunk(0, 0, 0, 0, state, np.arange(envs)).step_batches(), 50
        ),
    }
    env = env_fn(0)
    replay = Replay(100_000, env.observation_space, env.action_space, num_envs=envs)
    chunk = transport.Chunk(0, 0, 0, 0, state, np.arange(envs))

    def feed() -> None:
        for rows in chunk.step_batches():
            replay.add(rows, chunk.env_ids)

    out["replay_add_us"] = median_us(feed, 50)
    desc = pool.publish(state, slot=0)
    out["attach_zero_copy_us"] = median_us(attach_zero_copy)
    out["attach_copy_us"] = median_us(lambda: transport.attach(desc, copy=True))
    pool.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--envs", type=int, default=4, help="env copies per process")
    p.add_argument("--chunk", type=int, default=32, help="rows per env per chunk")
    p.add_argument("--start-method", default="spawn")
    p.add_argument("--agent", default="", help="act with this agent, e.g. dreamerv3:debug")
    args = p.parse_args()
    torch.set_num_threads(1)
    env_fn, policy_fn = factories(args.env, args.agent)
    res: dict = {"env": args.env, "envs_per_process": args.envs, "chunk_len": args.chunk}
    res["policy"] = args.agent or "mlp 2x64"
    res["machine"] = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    res["python"], res["torch"] = platform.python_version(), torch.__version__
    res["single_process"] = single_process(env_fn, policy_fn, args.envs, args.chunk, args.seconds)
    for n in (1, 2, 4):
        r = multi_process(
            env_fn, policy_fn, n, args.envs, args.chunk, args.seconds, args.start_method
        )
        res[f"collectors_{n}"] = r
    res["overhead"] = overhead(env_fn, args.envs, args.chunk)
    res["machine"]["load_avg_end"] = os.getloadavg()[0]
    base = res["single_process"]["steps_per_s"]
    print(f"{res['policy']} on {args.env}, {args.envs} envs/process, "
          f"chunks of {args.chunk} rows/env, "
          f"{os.cpu_count()} CPUs, load avg {res['machine']['load_avg_start']:.1f}")  # fmt: skip
    print(f"{'setup':<16}{'env steps/s':>12}{'vs single':>10}")
    print(f"{'single process':<16}{base:>12.0f}{1.0:>10.2f}")
    for n in (1, 2, 4):
        s = res[f"collectors_{n}"]["steps_per_s"]
        up = res[f"collectors_{n}"]["startup_s"]
        print(f"{f'{n} collector(s)':<16}{s:>12.0f}{s / base:>10.2f}   (start-up {up:.1f} s)")
    print(
        "single-process us/row:",
        {k: round(v, 1) for k, v in res["single_process"]["us_per_row"].items()},
    )
    print("per-chunk overhead:", {k: round(v, 1) for k, v in res["overhead"].items()})
    suffix = f"_{args.agent.replace(':', '_')}" if args.agent else ""
    out = ROOT / "benchmarks" / "results" / f"collectors_bench{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
