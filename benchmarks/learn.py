"""Learning curves: train a model on a task for a step budget over seeds, write JSON curves.

    OMP_NUM_THREADS=1 python benchmarks/learn.py tdmpc2:1m Pendulum-v1 --steps 15000 \
        --seeds 0 1 2 --set agent.act=policy updates_per_step=0.5

Each seed is a normal run directory under ``benchmarks/results/logs/<name>/seed<k>`` (metrics,
checkpoints; git-ignored; ``--logs DIR`` puts them elsewhere). ``--suite dmc_proprio`` puts a
benchmark suite's settings (`worldflux.training.suites`) before the ``--set`` items; the JSON
records the suite, the action repeat and the step unit. The curve JSON
``benchmarks/results/learn_<name>.json`` holds the settings and, per seed, the evaluation
points (env step, mean return over the eval episodes) and the training-episode returns averaged
around each of them (the published DreamerV3 curves' metric).
``--collect`` rebuilds the JSON from whatever the run directories hold (partial runs included;
seeds the JSON records whose run dirs are gone keep their recorded curves), and ``--seeds K``
runs a single seed (to start seeds as separate background processes). A seed
whose run directory already has checkpoints is resumed from the latest one (its saved settings;
``--set`` is ignored) and trained up to ``--steps``: that finishes an interrupted run or extends a
finished one to a larger budget, with the same result as one uninterrupted run (exact resume).

Runs longer than a session: ``--logs benchmarks/inflight`` keeps the run dirs in the work tree,
where they are committed (one checkpoint each, a few MB) so that a later session on a new machine
resumes them; a finished run's dir is deleted once its curve is collected.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_WINDOW = 10_000  # steps either side, as the DreamerV3 reference curves are averaged


def run_name(model: str, env: str, tag: str = "") -> str:
    name = f"{model.replace(':', '-')}_{env.replace('/', '-').replace(':', '-')}"
    return f"{name}_{tag}" if tag else name


def train_seed(
    model: str,
    env: str,
    steps: int,
    seed: int,
    overrides: list[str],
    tag: str = "",
    logs: Path = RESULTS / "logs",
) -> Path:
    from worldflux.training.run import build_trainer, resume_trainer
    from worldflux.training.run_config import parse_overrides

    run_dir = logs / run_name(model, env, tag) / f"seed{seed}"
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        # continue an interrupted run, or extend a finished one to the new budget
        trainer = resume_trainer(run_dir, progress=False, steps=steps)
    else:
        if run_dir.is_dir():  # stopped before its first checkpoint: nothing to continue from
            print(f"seed {seed}: {run_dir} has no checkpoint; starting it again", flush=True)
            shutil.rmtree(run_dir)
        # one checkpoint is enough to resume (saves are atomic) and keeps a run dir small enough
        # to carry to the next session (docs/benchmarks.md); a --set keep_checkpoints overrides it
        items = ["keep_checkpoints=1", *overrides, f"steps={steps}", f"seed={seed}"]
        items.append("progress=false")
        trainer = build_trainer(parse_overrides(model, env, items), run_dir)
    start = time.time()
    trainer.train()
    print(f"seed {seed}: {trainer.step} steps in {time.time() - start:.0f}s", flush=True)
    return run_dir


def collect(
    model: str,
    env: str,
    steps: int,
    overrides: list[str],
    tag: str = "",
    logs: Path = RESULTS / "logs",
    suite: str | None = None,
    results: Path = RESULTS,
) -> Path:
    """Write the curve JSON from the run directories of every seed found.

    A seed the JSON already records but whose run directory is gone (run dirs are scratch: a new
    machine starts without them) keeps its recorded curve, so collecting one new seed never drops
    the others. Keeping them needs the same settings: a JSON written with other `overrides` is
    not merged into (`SystemExit` naming both).
    """
    from worldflux.training.logging import read_metrics
    from worldflux.training.suites import AGENT_STEPS, get_suite

    out = results / f"learn_{run_name(model, env, tag)}.json"
    root = logs / run_name(model, env, tag)
    seeds: dict[str, Any] = {}
    for seed_dir in sorted(root.glob("seed*")):
        evals = read_metrics(seed_dir, "eval")
        profile = read_metrics(seed_dir, "profile")
        points: dict[int, float] = {}
        for r in evals:  # a resumed run may repeat a step: keep the last record
            points[int(r["step"])] = float(r["return_mean"])
        episodes = read_metrics(seed_dir, "episode")
        seeds[seed_dir.name] = {
            "steps": sorted(points),
            "returns": [points[s] for s in sorted(points)],
            "train_returns": train_curve(episodes, sorted(points)),
            "profile": profile[-1] if profile else None,
        }
    old = json.loads(out.read_text()) if out.is_file() else {}
    kept = {k: v for k, v in old.get("seeds", {}).items() if k not in seeds}
    if kept and old.get("overrides") != overrides:
        raise SystemExit(
            f"learn.py: {out} records {sorted(kept)} (run dirs not under {root}) with overrides "
            f"{old.get('overrides')}, not these ({overrides}); use another --tag, or move the "
            "file away to drop those seeds"
        )
    seeds = dict(sorted({**kept, **seeds}.items()))
    run_specs = [root / name / "run.json" for name in seeds]
    found = [f for f in run_specs if f.is_file()]
    run_spec = json.loads(found[0].read_text()) if found else old.get("run_spec")
    doc = {
        "model": model,
        "env": env,
        "tag": tag,
        "step_budget": steps,
        "suite": suite,
        "action_repeat": _action_repeat(run_spec),
        "step_unit": get_suite(suite).step_unit if suite else AGENT_STEPS,
        "overrides": overrides,
        "run_spec": run_spec,
        "metric": "mean return over the evaluation episodes (explore=False, real env returns)",
        "train_window": TRAIN_WINDOW,
        "train_metric": f"mean return of the training episodes ending within +-{TRAIN_WINDOW} "
        "steps of each evaluation step (sampled actions; DreamerV3's published curves)",
        "seeds": seeds,
        "complete": all(s["steps"] and s["steps"][-1] >= steps for s in seeds.values()),
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out.write_text(json.dumps(doc, indent=1))
    return out


def train_curve(episodes: list[dict[str, Any]], steps: list[int]) -> list[float | None]:
    """Per step in `steps`, the mean return of the training episodes that ended within
    `TRAIN_WINDOW` steps of it (None where none did): how DreamerV3's published DMC curves
    average (``benchmarks/references/README.md``), so ours compare on the same footing."""
    # keyed by (step, env): a resumed run may log an episode again
    ends = {(int(e["step"]), e.get("env", 0)): float(e["return"]) for e in episodes}
    out: list[float | None] = []
    for step in steps:
        near = [r for (s, _), r in ends.items() if abs(s - step) <= TRAIN_WINDOW]
        out.append(sum(near) / len(near) if near else None)
    return out


def _action_repeat(run_spec: dict[str, Any] | None) -> int:
    """The run's action repeat (make_env's default 1 when the run did not set one)."""
    for section in ("env", "env_kwargs"):  # run.json layouts: sections, or RunSpec's keys
        values = (run_spec or {}).get(section)
        if isinstance(values, dict) and "action_repeat" in values:
            return int(values["action_repeat"])
    return 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="family:preset")
    parser.add_argument("env", help="environment id")
    parser.add_argument("--steps", type=int, required=True, help="env-step budget per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--collect", action="store_true", help="only rebuild the JSON")
    parser.add_argument(
        "--tag", default="", help="suffix of the run name: keeps a variant's curve apart"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="run overrides (trainer fields, agent.x, env.x, model fields)",
    )
    parser.add_argument(
        "--suite", default=None, help="a benchmark suite's settings first (dmc_proprio, ...)"
    )
    parser.add_argument(
        "--logs", type=Path, default=RESULTS / "logs", help="where the seeds' run dirs live"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from worldflux.training.suites import suite_overrides

    items = suite_overrides(args.suite, args.model, args.overrides)
    if not args.collect:
        for seed in args.seeds:
            try:
                train_seed(args.model, args.env, args.steps, seed, items, args.tag, args.logs)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trainer saved and said where
                raise SystemExit(f"seed {seed}: stopped; the same command resumes it") from None
    print(collect(args.model, args.env, args.steps, items, args.tag, args.logs, args.suite))


if __name__ == "__main__":
    main(sys.argv[1:])
