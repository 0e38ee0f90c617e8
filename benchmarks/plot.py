"""Plot learning curves (``benchmarks/results/learn_*.json``) as PNGs with random baselines.

    python benchmarks/plot.py            # every curve file -> benchmarks/results/learn_*.png

Each plot shows every seed (thin), the mean over seeds at shared steps (thick), the issue's
target (dashed), the return of a uniformly random policy over 10 episodes (dotted), measured
here with the same env wrappers and cached in ``benchmarks/results/random_baselines.json``, and,
for DMC tasks, the reference implementation's published curve (dash-dot, ``references/``) on
the same step unit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCES = Path(__file__).resolve().parent / "references"  # published curves, see README there
TARGETS = {  # (model family, env) -> (return target, env-step budget), from the issue
    ("tdmpc2", "Pendulum-v1"): (-250.0, 15_000),
    ("dreamerv3", "CartPole-v1"): (400.0, 50_000),
    ("dreamerv3", "Pendulum-v1"): (-300.0, 30_000),
    ("tdmpc2", "dmc:cartpole-balance"): (900.0, 50_000),  # issue 16, agent steps
    ("tdmpc2", "dmc:reacher-easy"): (800.0, 100_000),
    ("dreamerv3", "dmc:cartpole-balance"): (500.0, 50_000),
    ("dreamerv3", "dmc:reacher-easy"): (600.0, 100_000),
}


def random_baseline(env_id: str, episodes: int = 10, seed: int = 0) -> float:
    """Mean return of uniform random actions over `episodes` episodes (cached)."""
    cache_file = RESULTS / "random_baselines.json"
    cache: dict[str, Any] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if env_id in cache:
        return float(cache[env_id]["return_mean"])
    from worldflux.core.spec import ActionSpec
    from worldflux.envs import make_env
    from worldflux.training.runner import random_actions

    env = make_env(env_id)
    spec = ActionSpec.from_space(env.action_space)
    rng = np.random.default_rng(seed)
    returns = []
    for ep in range(episodes):
        row, total = env.reset(seed=seed + ep), 0.0
        while not row.is_last:
            row = env.step(random_actions(spec, 1, rng)[0])
            total += row.reward
        returns.append(total)
    cache[env_id] = {"return_mean": float(np.mean(returns)), "episodes": episodes, "seed": seed}
    cache_file.write_text(json.dumps(cache, indent=1))
    return float(np.mean(returns))


def reference_curve(model: str, env: str) -> dict[str, Any] | None:
    """The published curve of `model`'s family on `env` (DMC tasks, ``references/``): the mean
    over the reference's seeds at each step they all logged, or None when there is none.

    Steps are agent steps with action repeat 2 in both references, the unit of our suite runs.
    """
    family, task = model.partition(":")[0], env.removeprefix("dmc:")
    if not env.startswith("dmc:"):
        return None
    runs: list[tuple[list[float], list[float]]] = []
    if family == "tdmpc2":
        path = REFERENCES / f"tdmpc2_{task}.csv"
        if not path.is_file():
            return None
        rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)  # step, reward, seed
        for seed in np.unique(rows[:, 2]):
            mine = rows[rows[:, 2] == seed]
            runs.append((mine[:, 0].tolist(), mine[:, 1].tolist()))
        label = "TD-MPC2 5M (official, eval)"
    elif family == "dreamerv3":
        name = "dmc_" + task.replace("-", "_")
        data = json.loads((REFERENCES / "dreamerv3_dmc_proprio.json").read_text())
        runs = [(r["xs"], r["ys"]) for r in data if r["task"] == name]
        label = "DreamerV3 (official, train episodes)"
    if not runs:
        return None
    steps = sorted(set.intersection(*(set(xs) for xs, _ in runs)))
    mean = [float(np.mean([ys[xs.index(t)] for xs, ys in runs])) for t in steps]
    return {"label": f"{label}, mean of {len(runs)} seeds", "steps": steps, "returns": mean}


def evaluated(doc: dict) -> dict[str, dict]:
    """The seeds of a curve document that have at least one evaluation (a seed just started
    has none yet)."""
    return {name: s for name, s in doc["seeds"].items() if s["steps"]}


def train_mean(seeds: dict[str, dict]) -> tuple[list[int], list[float]] | None:
    """The seed mean of the windowed training-episode returns (``train_returns``, written by
    `learn.py --collect`) at the steps where every seed has one; None when a seed lacks them."""
    curves = []
    for s in seeds.values():
        if not s.get("train_returns"):
            return None
        pairs = zip(s["steps"], s["train_returns"], strict=True)
        curves.append({t: r for t, r in pairs if r is not None})
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    return steps, [float(np.mean([c[t] for c in curves])) for t in steps]


def marker(xs: list) -> str | None:
    """Points marked on a curve of few of them (a curve of one point draws nothing)."""
    return "o" if len(xs) < 4 else None


def reference_style(steps: list, budget: int) -> tuple[dict[str, Any], str]:
    """How the published curve is drawn, and what its legend adds: a line when its points lie at
    most a quarter of our budget apart, else the points alone (TD-MPC2's curves are logged at 0
    and 100k only: a line between them would draw values the reference never measured)."""
    if max(np.diff(steps), default=0) <= budget / 4:
        return {"ls": "-.", "marker": "o", "ms": 3}, ""
    logged = ", ".join(f"{t / 1000:g}k" if t else "0" for t in steps)
    return {"ls": "none", "marker": "D", "ms": 6, "clip_on": False}, f" (logged at {logged} only)"


def train_label(doc: dict, n_seeds: int) -> str:
    """Legend entry of the windowed training-return curve, with the window the JSON records."""
    return f"ours, train episodes +-{doc['train_window'] / 1000:g}k, mean of {n_seeds}"


def plot(curve_file: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(curve_file.read_text())
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    seeds = evaluated(doc)
    for name, seed in seeds.items():
        ax.plot(seed["steps"], seed["returns"], lw=0.8, alpha=0.6, label=name,
                marker=marker(seed["steps"]), ms=3)  # fmt: skip
    shared = set.intersection(*(set(s["steps"]) for s in seeds.values())) if seeds else set()
    if len(seeds) > 1 and shared:
        steps = sorted(shared)
        mean = [np.mean([s["returns"][s["steps"].index(t)] for s in seeds.values()])
                for t in steps]  # fmt: skip
        ax.plot(steps, mean, lw=2.2, color="black", label=f"mean of {len(seeds)} seeds")
    trained = train_mean(seeds)
    if trained is not None:
        ax.plot(*trained, lw=1.4, ls="--", color="gray", marker=marker(trained[0]), ms=3,
                label=train_label(doc, len(seeds)))  # fmt: skip
    family = doc["model"].partition(":")[0]
    target = TARGETS.get((family, doc["env"]))
    if target is not None:
        ax.axhline(target[0], ls="--", color="green", label=f"target {target[0]:g}")
    ax.axhline(random_baseline(doc["env"]), ls=":", color="red", label="random policy")
    xmax = doc["step_budget"]
    ref = reference_curve(doc["model"], doc["env"])
    if ref is not None:  # up to the reference's first point past our budget (TD-MPC2: 100k)
        upto = next((i for i, t in enumerate(ref["steps"]) if t >= xmax), len(ref["steps"]) - 1)
        steps, returns = ref["steps"][: upto + 1], ref["returns"][: upto + 1]
        style, suffix = reference_style(steps, doc["step_budget"])
        ax.plot(steps, returns, lw=1.6, color="purple", label=ref["label"] + suffix, **style)
        xmax = max(xmax, steps[-1])
    n = len(seeds)
    status = f"{n} seed{'s' if n != 1 else ''}, " + (
        "complete" if doc.get("complete") else "PARTIAL (budget not reached)"
    )
    tag = f" [{doc['tag']}]" if doc.get("tag") else ""
    ax.set_title(f"{doc['model']}{tag} on {doc['env']}\n({status})", fontsize=9)
    unit = "agent steps (action repeat 2)" if doc.get("action_repeat", 1) == 2 else "env steps"
    ax.set_xlabel(unit)
    ax.set_ylabel("return (eval: mean of 10 episodes)")
    ax.set_xlim(0, xmax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = curve_file.with_suffix(".png")
    fig.savefig(out)
    plt.close(fig)
    return out


def table_row(curve_file: Path) -> str:
    """A markdown row: settings, progress, last eval per seed, first step at the target."""
    doc = json.loads(curve_file.read_text())
    family = doc["model"].partition(":")[0]
    target = TARGETS.get((family, doc["env"]), (float("nan"), doc["step_budget"]))[0]
    sign = 1.0  # every target here is "return >= target"
    seeds = evaluated(doc)
    last = [(s["steps"][-1], s["returns"][-1]) for s in seeds.values()]
    reached = []
    for s in seeds.values():
        hit = [t for t, r in zip(s["steps"], s["returns"], strict=True) if sign * r >= target]
        reached.append(str(hit[0]) if hit else "-")
    shared = sorted(set.intersection(*(set(s["steps"]) for s in seeds.values()))) if seeds else []
    mean_hit = [
        t
        for t in shared
        if np.mean([s["returns"][s["steps"].index(t)] for s in seeds.values()]) >= target
    ]
    steps = min((t for t, _ in last), default=0)
    lasts = ", ".join(f"{r:.0f}" for _, r in last) or "-"
    mean = f"{np.mean([r for _, r in last]):.0f}" if last else "-"
    tag = f" [{doc['tag']}]" if doc.get("tag") else ""
    return (
        f"| {doc['model']}{tag} | {doc['env']} | {' '.join(doc['overrides'])} | {len(seeds)} | "
        f"{steps:,} / {doc['step_budget']:,} | {lasts} | {mean} | {target:g} | "
        f"{', '.join(reached)} | {mean_hit[0] if mean_hit else '-'} | "
        f"{random_baseline(doc['env']):.0f} |"
    )


TABLE_HEAD = (
    "| model | env | settings | seeds | agent steps done / budget | last eval return per seed "
    "| mean | target | first eval step >= target, per seed | ... for the seed mean "
    "| random policy |\n"
    "|---|---|---|---:|---:|---|---:|---:|---|---:|---:|"
)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Plot learning curves (learn_*.json) as PNGs.")
    parser.add_argument(
        "files", nargs="*", type=Path, help="result JSONs (default: every learn_*.json)"
    )
    parser.add_argument(
        "--table", action="store_true", help="print docs/benchmarks.md table rows instead"
    )
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("learn_*.json"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        parser.error(f"files: expected learn_*.json result files, these do not exist: {missing}")
    if args.table:
        print(TABLE_HEAD)
    for f in files:
        print(table_row(f) if args.table else plot(f))


if __name__ == "__main__":
    main(sys.argv[1:])
