"""Update (and plan) speed per acceleration mode: eager, compiled, bf16, CUDA graphs; with the
first call's time (compile) and the fraction of a same-run matmul rate (MFU on a GPU).

Run (CPU, one thread): ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accel_bench.py``;
on a GPU: ``--device cuda --modes eager,compiled,bf16,cudagraphs`` (`benchmarks/gpu_check.sh`).
The batches and the matmul baseline are `model_bench`'s; FLOPs are counted once per model in
eager fp32 (matmuls and convolutions, forward + backward), so every mode's fraction uses the same
work. ``compiled``: ``compile=True``; ``bf16``: ``precision="bf16"`` (eager); ``cudagraphs``:
``compile=True, compile_mode="reduce-overhead"``; ``compiled+bf16`` both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model_bench import count_flops, random_batch  # noqa: E402
from worldflux.agents import make_agent  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "eager": {},
    "compiled": {"compile": True},
    "bf16": {"precision": "bf16"},
    "compiled+bf16": {"compile": True, "precision": "bf16"},
    "cudagraphs": {"compile": True, "compile_mode": "reduce-overhead"},
}
VEC = gym.spaces.Box(-np.inf, np.inf, (24,), np.float32)
CONT = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
IMG = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
DISC = gym.spaces.Discrete(18)
# name -> (model, obs space, action space, agent options, batch (B, T))
CASES: dict[str, tuple[str, gym.Space, gym.Space, dict[str, Any], tuple[int, int]]] = {
    "dreamerv3:size1m": (
        "dreamerv3:size1m",
        VEC,
        CONT,
        {"batch_size": 16, "seq_len": 64},
        (16, 64),
    ),
    "dreamerv3:size12m": (
        "dreamerv3:size12m",
        IMG,
        DISC,
        {"batch_size": 16, "seq_len": 64},
        (16, 64),
    ),
    "tdmpc2:1m": ("tdmpc2:1m", VEC, CONT, {"batch_size": 256}, (256, 4)),
    "tdmpc2:5m": ("tdmpc2:5m", VEC, CONT, {"batch_size": 256}, (256, 4)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], iters: int, device: torch.device) -> tuple[float, float]:
    """(first call s, median s per later call), synchronising the device around each."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    fn()  # a second warm-up (CUDA graphs record on it)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """Achieved FLOP/s of an (n x n) @ (n x n) matmul in `dtype` on `device`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _, sec = timed(lambda: a @ b, 10, device)
    return 2 * n**3 / sec


def bench(case: str, mode: str, device: torch.device, iters: int) -> dict[str, Any]:
    model, obs, act, options, (b, t) = CASES[case]
    torch._dynamo.reset()
    agent = make_agent(model, obs, act, seed=0, device=device,
                       agent_options={**options, **MODES[mode]})  # fmt: skip
    batch = random_batch(agent.model.obs_spec, agent.model.action_spec, b, t).to(device)
    first, sec = timed(lambda: agent.update(batch), iters, device)
    row = {"case": case, "mode": mode, "first_s": first, "update_ms": sec * 1e3}
    if case.startswith("tdmpc2"):
        state = torch.randn(1, 24, device=device)
        first_plan, plan = timed(lambda: agent.act(state, None, explore=True), iters, device)
        row.update(plan_first_s=first_plan, plan_ms=plan * 1e3)
    return row


def run_table(device: torch.device, cases: list[str], modes: list[str], iters: int) -> list[dict]:
    """Print and return one row per (case, mode): first call s, ms per update, % of the same-run
    matmul rate (bf16 modes against the bf16 rate), plan ms for TD-MPC2."""
    peak32, peak16 = matmul_rate(device, torch.float32), matmul_rate(device, torch.bfloat16)
    print(f"device {device}, threads {torch.get_num_threads()}; matmul 2048^3: "
          f"fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s")  # fmt: skip
    print(f"{'case':<19}{'mode':<14}{'first s':>8}{'upd ms':>9}{'%mm':>7}{'plan ms':>9}")
    rows = []
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"--cases: expected some of {list(CASES)}, got {case!r}")
        model, obs, act, options, (b, t) = CASES[case]
        probe = make_agent(model, obs, act, seed=0, device=device, agent_options=options)
        batch = random_batch(probe.model.obs_spec, probe.model.action_spec, b, t).to(device)
        flops = count_flops(lambda p=probe, x=batch: p.update(x))
        for mode in modes:
            if mode not in MODES:
                raise SystemExit(f"--modes: expected some of {list(MODES)}, got {mode!r}")
            row = bench(case, mode, device, iters)
            peak = peak16 if "bf16" in mode else peak32
            row["fraction_of_matmul"] = flops / (row["update_ms"] / 1e3) / peak
            rows.append(row)
            plan = f"{row['plan_ms']:>9.1f}" if "plan_ms" in row else ""
            print(f"{case:<19}{mode:<14}{row['first_s']:>8.1f}{row['update_ms']:>9.1f}"
                  f"{100 * row['fraction_of_matmul']:>6.1f}%{plan}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", default=",".join(CASES), help=f"some of {list(CASES)}")
    parser.add_argument("--modes", default="eager,compiled,bf16", help=f"some of {list(MODES)}")
    parser.add_argument("--iters", type=int, default=5, help="timed updates per cell")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = run_table(device, args.cases.split(","), args.modes.split(","), args.iters)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
