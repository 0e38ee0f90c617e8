"""Model update-step speed on one CPU thread, next to a same-run matmul baseline.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/model_bench.py [--quick] [--json PATH]``;
``--modes eager,compiled,bf16`` prints those columns for dreamerv3:size1m and size12m and
tdmpc2:1m and 5m (update and plan) instead, with the first call's (compile) time
(`accel_bench.py`).

The baseline times a square float32 matmul and reports the achieved GFLOP/s; every model section
reports ms per update, updates/s, the update's FLOPs (counted with
``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, forward + backward) and
the fraction of the baseline rate it reaches. A second baseline, the bandwidth of a DRAM-bound
fp32 add, is printed beside it: element-wise work is bound by it, and it differs between hosts.
To add a section, write a function ``(args) -> list[Result]`` and append it to ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from worldflux.agents.dreamer import DreamerAgent  # noqa: E402
from worldflux.agents.tdmpc2 import TDMPC2Agent  # noqa: E402
from worldflux.core.batch import Batch  # noqa: E402
from worldflux.core.registry import create_world_model  # noqa: E402
from worldflux.core.spec import ActionSpec, ObsSpec  # noqa: E402


@dataclass
class Result:
    """One measured configuration."""

    name: str
    ms: float  # median wall time per update
    cpu_ms: float  # median process CPU time per update (less sensitive to a shared machine)
    flops: float  # FLOPs per update (matmul + conv, fwd + bwd)
    notes: dict[str, float | str] = field(default_factory=dict)


def time_it(fn: Callable[[], object], iters: int, warmup: int = 1) -> tuple[float, float]:
    """Median (wall, process CPU) seconds per call after `warmup` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call (it also serves as a warm-up call)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# --- baseline ---------------------------------------------------------------------------------


def matmul_gflops(n: int = 1024, iters: int = 20) -> tuple[float, float]:
    """Achieved GFLOP/s (by wall time, by CPU time) of an (n x n) @ (n x n) fp32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    wall, cpu = time_it(lambda: a @ b, iters, warmup=3)
    return 2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9


def add_gbps(n: int = 1 << 22, iters: int = 20) -> float:
    """Achieved GB/s (by CPU time) of an out-of-place fp32 add on 16 MiB operands (DRAM-bound).

    Element-wise kernels (norms, activations, optimiser steps) are bound by memory bandwidth, not
    by the matmul rate; hosts of one machine class differ far more in this figure than in the
    matmul one, so it is printed next to every model section to explain wall-time differences
    between runs on different hosts."""
    x, y, z = torch.randn(n), torch.randn(n), torch.empty(n)
    _, cpu = time_it(lambda: torch.add(x, y, out=z), iters, warmup=3)
    return 3 * 4 * n / cpu / 1e9


# --- DreamerV3 --------------------------------------------------------------------------------


def random_batch(obs_spec: ObsSpec, act: ActionSpec, B: int, T: int, seed: int = 0) -> Batch:
    """A valid (B, T) batch of random data with an episode boundary in each row."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for k, f in obs_spec.fields.items():
        if f.is_image:
            obs[k] = torch.randint(0, 256, (B, T, *f.shape), generator=g, dtype=torch.uint8)
        else:
            obs[k] = torch.randn(B, T, *f.shape, generator=g)
    if act.discrete:
        idx = torch.randint(0, act.dim, (B, T), generator=g)
        action = torch.nn.functional.one_hot(idx, act.dim).float()
    else:
        action = torch.rand(B, T, act.dim, generator=g) * 2 - 1
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[:, T // 2] = True
    is_last = torch.roll(is_first, -1, 1)
    is_last[:, -1] = False
    return Batch(
        obs=obs_spec.from_fields(obs),
        action=action,
        reward=torch.randn(B, T, generator=g),
        is_first=is_first,
        is_terminal=is_last & (torch.arange(B) % 2 == 0).unsqueeze(1),
        is_last=is_last,
    )


def _dreamer_update(preset: str, obs_space: gym.Space, act_space: gym.Space, iters: int) -> Result:
    torch.manual_seed(0)
    model = create_world_model(f"dreamerv3:{preset}", obs_space, act_space, seed=0)
    batch = random_batch(model.obs_spec, model.action_spec, 16, 64)
    agent = DreamerAgent(model, batch_size=16, seq_len=64)  # type: ignore[arg-type]
    step = lambda: agent.update(batch)  # noqa: E731
    flops = count_flops(step)
    wall, cpu = time_it(step, iters, warmup=0)
    params = sum(p.numel() for p in model.parameters())
    return Result(f"dreamerv3:{preset}", wall * 1e3, cpu * 1e3, flops, {"params": params})


def bench_dreamerv3(args: argparse.Namespace) -> list[Result]:
    """size1m on vector obs (24-D, 6-D continuous actions) and size12m on 64x64x3 images
    (18 discrete actions); batch 16 x 64; one update = world model + actor-critic."""
    vec = gym.spaces.Box(-np.inf, np.inf, (24,), np.float32)
    cont = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    img = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    disc = gym.spaces.Discrete(18)
    out = [_dreamer_update("size1m", vec, cont, 3 if args.quick else 8)]
    out[0].notes["reference_ms"] = 924.0  # a PyTorch port's size1m 16x64 update, same class
    out[0].notes["obs"] = "vector 24, Box(6)"
    out.append(_dreamer_update("size12m", img, disc, 1 if args.quick else 2))
    out[1].notes["obs"] = "image 64x64x3, Discrete(18)"
    return out


# --- TD-MPC2 ---------------------------------------------------------------------------------

# The official implementation (nicklashansen/tdmpc2) on this machine class, one thread, as given
# in the TD-MPC2 issue: update (batch 256, horizon 3) and one MPPI plan (one env).
TDMPC2_REFERENCE_MS = {"1m": (162.0, 216.0), "5m": (587.0, 618.0)}


def bench_tdmpc2(args: argparse.Namespace) -> list[Result]:
    """tdmpc2 1m and 5m on vector obs (24-D, 6-D continuous actions): one full update (model +
    policy + target EMA, batch 256 x horizon 3) and one MPPI plan (6 iterations x 512 samples,
    horizon 3, 24 policy trajectories) for one environment."""
    from worldflux.planners import MPPI

    vec = gym.spaces.Box(-np.inf, np.inf, (24,), np.float32)
    cont = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    iters = 3 if args.quick else 10
    out = []
    for preset, (ref_update, ref_plan) in TDMPC2_REFERENCE_MS.items():
        torch.manual_seed(0)
        model = create_world_model(f"tdmpc2:{preset}", vec, cont, seed=0)
        batch = random_batch(model.obs_spec, model.action_spec, 256, 4)
        agent = TDMPC2Agent(model, batch_size=256)  # type: ignore[arg-type]
        step = lambda a=agent, b=batch: a.update(b)  # noqa: E731
        sec, cpu = time_it(step, iters, warmup=2)
        params = sum(p.numel() for p in model.parameters())
        notes: dict[str, float | str] = {"params": params, "reference_ms": ref_update}
        notes["obs"] = "vector 24, Box(6), batch 256 x H3"
        flops = count_flops(step)
        out.append(Result(f"tdmpc2:{preset} update", sec * 1e3, cpu * 1e3, flops, notes))
        model.eval()
        planner = MPPI.from_config(model.config, generator=torch.Generator().manual_seed(0))
        state = model.encode(torch.randn(1, 24))
        plan = lambda m=model, p=planner, s=state: p.plan(m, s, explore=True)  # noqa: E731
        sec, cpu = time_it(plan, iters, warmup=2)
        notes = {"reference_ms": ref_plan, "obs": "1 env, 6 it x 512 samples"}
        flops = count_flops(plan)
        out.append(Result(f"tdmpc2:{preset} plan", sec * 1e3, cpu * 1e3, flops, notes))
    return out


SECTIONS: list[Callable[[argparse.Namespace], list[Result]]] = [bench_dreamerv3, bench_tdmpc2]


def _report(r: Result, base_wall: float, base_cpu: float) -> str:
    rate, rate_cpu = r.flops / r.ms / 1e6, r.flops / r.cpu_ms / 1e6
    r.notes.update(matmul_gflops_wall=round(base_wall, 1), matmul_gflops_cpu=round(base_cpu, 1))
    r.notes.update(
        fraction_wall=round(rate / base_wall, 3), fraction_cpu=round(rate_cpu / base_cpu, 3)
    )
    line = f"{r.name:<18}{r.ms:>9.0f}{r.cpu_ms:>9.0f}{1e3 / r.ms:>9.2f}{r.flops / 1e9:>9.2f}"
    line += f"{100 * rate / base_wall:>8.1f}%{100 * rate_cpu / base_cpu:>8.1f}%"
    if "reference_ms" in r.notes:
        ref = float(r.notes["reference_ms"])
        line += f"  reference {ref:.0f} ms -> {ref / r.ms:.2f}x (wall), {ref / r.cpu_ms:.2f}x (cpu)"
    return line + f"  [{r.notes.get('obs', '')}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing iterations")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--modes",
        default=None,
        help="instead: columns per acceleration mode (eager,compiled,bf16,...) for every model, "
        "with first-call (compile) time and %% of the same-run matmul rate (accel_bench.py)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.modes is not None:
        from accel_bench import CASES, run_table

        iters = 2 if args.quick else 5
        rows = run_table(torch.device("cpu"), list(CASES), args.modes.split(","), iters)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    print(f"threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(
        f"{'model':<18}{'wall ms':>9}{'cpu ms':>9}{'upd/s':>9}{'GFLOP':>9}{'%mm wall':>9}"
        f"{'%mm cpu':>9}"
    )
    results = []
    for section in SECTIONS:
        # the baseline is measured right before and right after each section and averaged, so a
        # change in the other jobs' load during the section shows up on both sides of a ratio
        before, bw_before = matmul_gflops(), add_gbps()
        section_results = section(args)
        after, bw_after = matmul_gflops(), add_gbps()
        base_wall, base_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        print(
            f"matmul 1024^3 fp32 (before / after): {before[0]:.1f} / {after[0]:.1f} GFLOP/s wall, "
            f"{before[1]:.1f} / {after[1]:.1f} GFLOP/s cpu; fp32 add on 16 MiB: "
            f"{bw_before:.1f} / {bw_after:.1f} GB/s"
        )
        for r in section_results:
            print(_report(r, base_wall, base_cpu), flush=True)
            r.notes["add_gbps"] = round((bw_before + bw_after) / 2, 1)
            results.append(r)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
