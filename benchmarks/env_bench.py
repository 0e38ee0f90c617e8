"""Environment adapter step rates: agent steps per second with random actions, one thread.

Run: OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python benchmarks/env_bench.py [--quick] [--no-docs]
Prints one table, writes benchmarks/results/env_bench.json and the "## Environments" section of
docs/benchmarks.md. The raw Gymnasium row is the same task without the adapter (its overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from worldflux.envs import make_env, make_vector_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rate(reset: Callable[[], Any], step: Callable[[], bool], steps: int) -> float:
    """Agent steps per second over `steps` steps (resetting whenever `step` reports an end)."""
    reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        if step():
            reset()
    return steps / (time.perf_counter() - t0)


def raw_gym(id: str, steps: int) -> float:  # noqa: A002
    env = gymnasium.make(id)
    env.action_space.seed(0)

    def step() -> bool:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        return bool(term or trunc)

    return rate(lambda: env.reset(seed=0), step, steps)


def adapter(id: str, steps: int, **kwargs: Any) -> float:  # noqa: A002
    env = make_env(id, seed=0, **kwargs)
    return rate(env.reset, lambda: env.step(env.action_space.sample()).is_last, steps)


def vector(id: str, n: int, steps: int) -> float:  # noqa: A002
    env = make_vector_env(id, n, seed=0)
    env.reset()
    t0 = time.perf_counter()
    for _ in range(steps // n):
        env.step(env.sample_actions())
    return (steps // n) * n / (time.perf_counter() - t0)


CASES: list[tuple[str, Callable[[int], float], int]] = [
    ("CartPole-v1, raw gymnasium (no adapter)", lambda n: raw_gym("CartPole-v1", n), 20000),
    ("CartPole-v1, GymEnv", lambda n: adapter("CartPole-v1", n), 20000),
    ("CartPole-v1, VectorEnv x8 (total steps)", lambda n: vector("CartPole-v1", 8, n), 20000),
    ("Pendulum-v1, GymEnv", lambda n: adapter("Pendulum-v1", n), 20000),
    (
        "Pendulum-v1, image 64x64 (render + resize)",
        lambda n: adapter("Pendulum-v1", n, image=True),
        2000,
    ),
    (
        "dmc:cartpole-swingup, state, repeat 2",
        lambda n: adapter("dmc:cartpole-swingup", n, action_repeat=2),
        4000,
    ),
    (
        "dmc:cartpole-swingup, 64x64 pixels, repeat 2",
        lambda n: adapter("dmc:cartpole-swingup", n, image=True, action_repeat=2),
        500,
    ),
    (
        "dmc:cartpole-swingup, 64x64 pixels, repeat 2, shadow_size=512",
        lambda n: adapter("dmc:cartpole-swingup", n, image=True, action_repeat=2, shadow_size=512),
        500,
    ),
    ("atari:Pong, 64x64 RGB, frame skip 4", lambda n: adapter("atari:Pong", n), 2000),
    (
        "atari:Pong, 84x84 gray, frame skip 4",
        lambda n: adapter("atari:Pong", n, size=84, grayscale=True),
        2000,
    ),
]


def write_docs(md_table: str, machine: str) -> None:
    """Replace (or append) the '## Environments' section of docs/benchmarks.md."""
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = (
        "## Environments\n\n"
        "Reproduce: `OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python benchmarks/env_bench.py` "
        "(results also in `benchmarks/results/env_bench.json`).\n\n"
        f"Machine: {machine}. One thread, random actions, resets included; agent steps per "
        "second (one agent step = `action_repeat` env steps). dm_control pixels are rendered "
        "by MuJoCo through EGL (software llvmpipe, no GPU here). The CPUs are shared with other "
        "jobs: under load, rates drop by up to 5x (CartPole raw: 86k steps/s in a quiet "
        "moment, 16k at load average 10), so compare rows of one run, not runs.\n\n"
        + md_table
        + "\n"
    )
    pattern = re.compile(r"## Environments\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10x fewer steps")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ or results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.random.seed(0)
    results: dict[str, float] = {}
    for name, fn, steps in CASES:
        results[name] = round(fn(max(50, steps // 10) if args.quick else steps), 1)
        print(f"{name}: {results[name]:,.0f} steps/s", flush=True)
    md = "| environment | agent steps/s |\n|---|---:|\n" + "\n".join(
        f"| {name} | {value:,.0f} |" for name, value in results.items()
    )
    load = os.getloadavg()[0]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other "
        f"jobs (1-min load average {load:.1f} at the end of the run)"
    )
    if not args.no_docs:
        out = ROOT / "benchmarks" / "results" / "env_bench.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "steps_per_s": results}, indent=2) + "\n")
        write_docs(md, machine)


if __name__ == "__main__":
    main()
