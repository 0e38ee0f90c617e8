"""Data-parallel online training throughput: 1 process against W gloo ranks, same global batch.

    OMP_NUM_THREADS=1 python benchmarks/dp_bench.py --model dreamerv3:size1m --env CartPole-v1 \
        --ranks 2 --steps 1200 --set agent.batch_size=8 agent.seq_len=32 updates_per_step=0.125

Both runs use the same settings (global batch, updates per global env step); the W-rank run
splits the batch, so each rank's update is W times smaller and the ranks step W times as many
envs. Prints env steps/s, updates/s and the share of wall time spent in the gradient
all-reduce, and writes ``benchmarks/results/dp_bench.json``. Needs W idle cores to mean much.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

RESULTS = Path(__file__).resolve().parent / "results"
COMMON = ["seed_steps=200", "eval_every=0", "checkpoint_every=1000000000", "progress=false",
          "tensorboard=false", "save_replay=false"]  # fmt: skip


def _run(
    rank: int, world: int, init: str, model: str, env: str, items: list[str], out: str
) -> None:
    from worldflux.distributed import ddp
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides

    torch.set_num_threads(1)
    if world > 1:
        ctx = ddp.init_distributed("cpu", f"file://{init}", rank=rank, world_size=world)
    else:
        ctx = ddp.init_distributed("cpu")
    try:
        spec = parse_overrides(model, env, items)
        trainer = build_trainer(spec, Path(out) / "run", distributed=ctx)
        t0 = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - t0
        if ctx.is_main:
            record = {
                "world_size": world,
                "wall_s": wall,
                "env_steps": result["step"],
                "updates": result["updates"],
                "env_steps_per_s": result["step"] / wall,
                "updates_per_s": result["updates"] / wall,
                "allreduce_s": trainer.sync.reducer.seconds,
                "allreduce_calls": trainer.sync.reducer.calls,
                "profile_s": dict(trainer.profile),
            }
            (Path(out) / "result.json").write_text(json.dumps(record))
    finally:
        ddp.shutdown(ctx)


def measure(world: int, model: str, env: str, items: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        args = (world, f"{tmp}/init", model, env, items, tmp)
        if world == 1:
            _run(0, *args)
        else:
            mp.start_processes(_run, args, nprocs=world, start_method="fork")
        return json.loads((Path(tmp) / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dreamerv3:size1m")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    items = [*COMMON, *args.overrides, f"steps={args.steps}"]
    runs = [measure(w, args.model, args.env, items) for w in (1, args.ranks)]
    for r in runs:
        share = r["allreduce_s"] / r["wall_s"]
        print(
            f"{args.model} on {args.env}, {r['world_size']} rank(s): "
            f"{r['env_steps_per_s']:7.1f} env steps/s, {r['updates_per_s']:5.2f} updates/s, "
            f"all-reduce {r['allreduce_s']:.2f} s ({share:.1%} of wall, "
            f"{1e3 * r['allreduce_s'] / max(1, r['allreduce_calls']):.2f} ms per call)"
        )
    speedup = runs[1]["env_steps_per_s"] / runs[0]["env_steps_per_s"]
    print(f"speed-up {args.ranks} ranks / 1 process: {speedup:.2f}x (settings: {items})")
    written = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    doc = {"model": args.model, "env": args.env, "settings": items, "runs": runs,
           "speedup": speedup, "written": written}  # fmt: skip
    (RESULTS / "dp_bench.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
