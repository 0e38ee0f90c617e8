"""Per-seed outcomes of every test whose verdict depends on training, for seeds 0..N-1.

A different CPU kind rounds differently and so acts like a different seed; a learning test
must hold for every seed measured here, with margin. Each row runs one test's body (imported
from the test module, so the numbers are the ones the test sees) with the agent/model init,
trainer, env, replay and torch global seeds all set to the row's seed. `--frozen` runs the
same bodies with every learning rate at 0: updates run, weights stay put, and the bars must
fail. Results: `benchmarks/results/learning_test_seeds.md`.

Run (one thread; the slow DreamerV3 MatchLight body takes ~1-2 minutes a seed):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_test_seeds.py --seeds 10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_test_seeds.py --seeds 10 --frozen
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_test_seeds.py --cases dreamer_match
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "agents"), str(ROOT / "tests" / "models")]

import test_dreamerv3_learning as dv3  # noqa: E402
import test_jepa_learning as jepa  # noqa: E402
import test_jepa_learning_smoke as jepa_smoke  # noqa: E402
import test_learning_smoke as smoke  # noqa: E402
import test_tdmpc2_training as td  # noqa: E402

Outcome = dict[str, float]
Body = Callable[[int, bool], Outcome]
Bar = Callable[[Outcome], bool]


def _jepa_tiny(seed: int, frozen: bool, updates: int = 40, ablation: bool = False) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        return jepa.tiny_training(Path(tmp), seed, 0.0 if frozen else 1e-3, updates, ablation)


def _jepa_goals(seed: int, frozen: bool) -> Outcome:
    m = jepa_smoke.measure(seed, frozen)
    return {f"{k}_{n}": v[i] for k, v in m.items() for i, n in enumerate(("succ", "dist"))}


def _jepa_tiny_old(r: Outcome) -> bool:
    return r["pred"] < 0.2 and r["emb_std_min"] > 0.3 and r["rep_std_min"] > 0.3


# name -> (test it measures, body(seed, frozen) -> outcome, the test's bar on one seed's
# outcome, the old single-seed bar where the body is unchanged (None: the body changed; the
# old body's table is in the results file))
CASES: dict[str, tuple[str, Body, Bar, Bar | None]] = {
    "tdmpc2_match": (
        "tests/agents/test_learning_smoke.py::test_tdmpc2_learns_match_light",
        lambda s, f: {"return": smoke.tdmpc2_match_light(s, f)},
        lambda r: r["return"] >= 7.0,
        None,
    ),
    "dreamer_switch": (
        "tests/agents/test_learning_smoke.py::test_dreamer_learns_switch_light",
        lambda s, f: smoke.dreamer_switch_light(s, f),
        lambda r: r["before"] < smoke.RANDOM_RETURN and r["after"] >= 7.0,
        None,
    ),
    "dreamer_wm_match": (
        "tests/agents/test_learning_smoke.py::test_dreamer_world_model_learns_match_light",
        lambda s, f: smoke.dreamer_world_model_match_light(s, f),
        lambda r: r["rew"] < 0.8 and r["rec"] < 0.5 and r["nonfinite"] == 0.0,
        lambda r: r["rew"] < 0.8 and r["rec"] < 0.5 and r["nonfinite"] == 0.0,
    ),
    "untrained_tdmpc2": (
        "tests/agents/test_learning_smoke.py::test_untrained_agent_is_near_random[tdmpc2]",
        lambda s, f: {"return": smoke.untrained_return("tdmpc2:debug", s)},
        lambda r: r["return"] < 7.0,
        lambda r: r["return"] < 7.0,
    ),
    "untrained_dreamer": (
        "tests/agents/test_learning_smoke.py::test_untrained_agent_is_near_random[dreamerv3]",
        lambda s, f: {"return": smoke.untrained_return("dreamerv3:debug", s)},
        lambda r: r["return"] < 7.0,
        lambda r: r["return"] < 7.0,
    ),
    "jepa_goals": (
        "tests/agents/test_jepa_learning_smoke.py::test_jepa_learns_to_reach_goals",
        _jepa_goals,
        lambda r: (
            r["trained_succ"] >= 0.6
            and r["trained_dist"] <= 0.15
            and max(r["random_succ"], r["untrained_succ"]) <= 0.4
            and min(r["random_dist"], r["untrained_dist"]) >= 0.25
        ),
        lambda r: (
            r["trained_succ"] >= 0.7
            and r["trained_dist"] <= 0.15
            and max(r["random_succ"], r["untrained_succ"]) <= 0.3
            and min(r["random_dist"], r["untrained_dist"]) >= 0.3
        ),
    ),
    "dv3_overfit": (
        "tests/models/test_dreamerv3_learning.py::test_world_model_overfits_one_batch",
        lambda s, f: dv3.overfit_one_batch(s, 0.0 if f else 3e-3),
        lambda r: r["rec"] < 0.1 and r["rew"] < 0.1,
        lambda r: r["rec"] < 0.1 and r["rew"] < 0.1,
    ),
    "dv3_bandit_ac": (
        "tests/models/test_dreamerv3_learning.py::"
        "test_actor_critic_learns_optimal_action_in_imagination",
        lambda s, f: dv3.bandit_actor_critic(s, 0.0 if f else 3e-3),
        lambda r: r["p_best"] > 0.9 and r["value0"] == 0.0 and r["value"] > 3.0,
        lambda r: r["p_best"] > 0.9 and r["value0"] == 0.0 and r["value"] > 3.0,
    ),
    "dv3_continuous_ac": (
        "tests/models/test_dreamerv3_learning.py::"
        "test_dynamics_backprop_actor_finds_continuous_optimum",
        lambda s, f: dv3.continuous_actor(s, 0.0 if f else 3e-3),
        lambda r: r["start_abs"] < 0.2 and r["error"] <= 0.1,
        lambda r: r["start_abs"] < 0.1 and r["error"] <= 0.1,
    ),
    "jepa_tiny": (
        "tests/models/test_jepa_learning.py::test_tiny_training_learns_and_sigreg_prevents_collapse",
        lambda s, f: _jepa_tiny(s, f, ablation=True),
        lambda r: (
            r["finite"] == 1.0
            and r["pred"] < 0.2
            and r["emb_std_min"] > 0.2
            and r["eff_rank"] > 2.0
            and r["rep_std_min"] > 0.2
        ),
        lambda r: (
            _jepa_tiny_old(r)
            and r["eff_rank"] > 2.0
            and r["finite"] == 1.0
            and r["none_std_min"] < 0.5 * r["emb_std_min"]
        ),
    ),
    "tdmpc2_overfit": (
        "tests/models/test_tdmpc2_training.py::test_overfits_one_batch_on_debug",
        lambda s, f: td.overfit_one_batch(s, f),
        lambda r: (
            r["reward"] < 0.4
            and r["total"] < 0.3
            and r["consistency"] < 0.3
            and r["reward_mae"] < 0.3
        ),
        lambda r: (
            r["reward"] < 0.3
            and r["total"] < 0.25
            and r["consistency"] < 0.2
            and r["reward_mae"] < 0.3
        ),
    ),
    "dreamer_match": (
        "tests/agents/test_learning_smoke.py::test_dreamer_learns_match_light (slow)",
        lambda s, f: {"return": smoke.dreamer_match_light(s, f)},
        lambda r: r["return"] >= 7.0,
        lambda r: r["return"] >= 7.0,
    ),
    "jepa_ablation": (
        "tests/models/test_jepa_learning.py::test_without_anti_collapse_term_the_embedding_shrinks"
        " (slow; its bar is on the 10-seed means, the column here is none < sigreg per seed)",
        lambda s, f: _jepa_tiny(s, f, updates=200, ablation=True),
        lambda r: r["none_std_min"] < r["emb_std_min"],
        None,
    ),
}
SLOW = ("dreamer_match", "jepa_ablation")
FAST = [name for name in CASES if name not in SLOW]


def fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(name: str, seeds: list[int], frozen: bool) -> None:
    test, body, bar, old = CASES[name]
    print(f"\n### {name}{' (learning rates 0)' if frozen else ''}\n\n`{test}`\n", flush=True)
    rows, header = [], None
    for seed in seeds:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        r = body(seed, frozen)
        dt = time.perf_counter() - t0
        if header is None:
            header = list(r)
            print("| seed | " + " | ".join(header) + " | old bar | new bar | s |")
            print("|---" * (len(header) + 4) + "|")
        ok = bar(r)
        rows.append((r, ok))
        cells = " | ".join(fmt(r[k]) for k in header)
        was = "-" if old is None else ("pass" if old(r) else "FAIL")
        print(f"| {seed} | {cells} | {was} | {'pass' if ok else 'FAIL'} | {dt:.1f} |", flush=True)
    assert header is not None
    for k in header:
        values = [r[k] for r, _ in rows]
        print(f"\n{k}: min {fmt(min(values))}, mean {fmt(sum(values) / len(values))}, "
              f"max {fmt(max(values))}", end="")  # fmt: skip
    passed = sum(ok for _, ok in rows)
    print(f"\n\nnew per-seed bar passed on {passed} of {len(rows)} seeds\n", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    p.add_argument("--first", type=int, default=0, help="first seed")
    p.add_argument("--cases", default=",".join(FAST), help=f"comma-separated, of {list(CASES)}")
    p.add_argument("--frozen", action="store_true", help="every learning rate 0")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.first, args.first + args.seeds))
    for name in args.cases.split(","):
        table(name, seeds, args.frozen)


if __name__ == "__main__":
    main()
