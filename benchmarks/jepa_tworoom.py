"""Learning benchmark: JEPA `small` on the two-room task, goal reaching with CEM in latent space.

Pipeline: record a noisy-expert dataset (once, cached), train JEPA offline with SIGReg (main run)
and without any anti-collapse term (ablation), evaluate goal reaching (start in the left room, goal
in the right room, `--budget` steps) with receding-horizon CEM, beside a random-action baseline
and the scripted expert. Writes `<out>.json` and `<out>.png`.

Run (about 40 minutes on one thread of a shared 2-core machine: two 1,500-step trainings plus
the evaluations; `--variants sigreg` halves it):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/jepa_tworoom.py
Quick smoke run: add `--quick`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_model, save_model  # noqa: E402

from worldflux.core.registry import create_world_model  # noqa: E402
from worldflux.core.state import State  # noqa: E402
from worldflux.data.offline import OfflineDataset, RecordConfig, record_tworoom  # noqa: E402
from worldflux.envs.tworoom import TwoRoomEnv, expert_action  # noqa: E402
from worldflux.models.jepa import JEPA  # noqa: E402
from worldflux.models.jepa.planning import GoalPlanner  # noqa: E402
from worldflux.planners import CEM  # noqa: E402

RESULTS = Path(__file__).parent / "results"
Result = dict[str, float | None]  # success_rate, mean_steps_success (None: no success), ...


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="/tmp/worldflux_tworoom_data", help="dataset folder (cache)")
    p.add_argument("--episodes", type=int, default=300, help="recorded episodes")
    p.add_argument("--episode-length", type=int, default=64, help="steps per recorded episode")
    p.add_argument("--steps", type=int, default=1500, help="training steps per variant")
    p.add_argument("--batch", type=int, default=32, help="sequences per batch")
    p.add_argument("--seq", type=int, default=8, help="sequence length T")
    p.add_argument("--eval-every", type=int, default=500, help="steps between mid-training evals")
    p.add_argument("--mid-episodes", type=int, default=10, help="episodes per mid-training eval")
    p.add_argument("--eval-episodes", type=int, default=50, help="episodes in the final eval")
    p.add_argument("--budget", type=int, default=50, help="environment steps per episode")
    p.add_argument("--horizon", type=int, default=5, help="CEM horizon (planned actions)")
    p.add_argument("--repeat", type=int, default=3, help="model steps per planned action")
    p.add_argument("--samples", type=int, default=128, help="CEM samples")
    p.add_argument("--elites", type=int, default=16, help="CEM elites")
    p.add_argument("--iterations", type=int, default=5, help="CEM iterations")
    p.add_argument("--variants", default="sigreg,none", help="regularizers to train")
    p.add_argument(
        "--sigreg-t-max",
        type=float,
        default=5.0,
        help="Epps-Pulley integration limit (the recorded run used 5; the model default is 3)",
    )
    p.add_argument("--intermediate", type=float, default=1.0, help="GoalPlanner weight")
    p.add_argument("--ckpt-dir", default="/tmp/worldflux_tworoom_ckpt", help="weights go here")
    p.add_argument("--eval-only", action="store_true", help="load weights from --ckpt-dir")
    p.add_argument("--baselines-only", action="store_true", help="random, expert, oracle only")
    p.add_argument("--replot", action="store_true", help="redraw <out>.png from <out>.json")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first eval episode's seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "jepa_tworoom"), help="output path prefix")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = p.parse_args()
    if args.quick:
        args.episodes, args.steps, args.eval_every = 8, 20, 10
        args.mid_episodes, args.eval_episodes, args.budget = 2, 4, 10
        args.samples, args.elites, args.iterations = 16, 4, 2
    return args


def make_env(seed_offset: int = 0) -> TwoRoomEnv:
    return TwoRoomEnv(start_room="left", goal_room="other", max_steps=10_000)


def eval_episodes(n: int, seed: int) -> list[TwoRoomEnv]:
    """`n` environments reset with seeds seed..seed+n-1 (fixed eval set)."""
    envs = [make_env() for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    return envs


def run_policy(envs: list[TwoRoomEnv], budget: int, act: Any) -> Result:
    """Step all `envs` for up to `budget` steps with `act(envs, obs (B,H,W,3), done) -> (B, 2)`."""
    done = np.zeros(len(envs), bool)
    steps = np.full(len(envs), budget)
    for t in range(budget):
        obs = np.stack([e.render() for e in envs])
        actions = act(envs, obs, done)
        for i, env in enumerate(envs):
            if done[i]:
                continue
            *_, term, _, info = env.step(actions[i])
            if term:
                done[i], steps[i] = True, t + 1
        if done.all():
            break
    final = [float(np.linalg.norm(e.pos - e.goal)) for e in envs]
    return {
        "success_rate": float(done.mean()),
        "mean_steps_success": float(steps[done].mean()) if done.any() else None,
        "mean_final_distance": float(np.mean(final)),
    }


def eval_planner(model: JEPA, args: argparse.Namespace, n: int, seed: int) -> Result:
    """Goal reaching with receding-horizon CEM on `model`'s latent predictor."""
    model.eval()
    envs = eval_episodes(n, seed)
    gen = torch.Generator().manual_seed(seed)
    cem = CEM(2, args.horizon, args.samples, args.elites, args.iterations, generator=gen)
    planner = GoalPlanner(cem, args.intermediate, action_repeat=args.repeat)
    with torch.no_grad():
        goal = model.encode(torch.from_numpy(np.stack([e.goal_observation() for e in envs])))
    goal_rep = goal.tensors["rep"]
    state: dict[str, Any] = {"s": None, "a": None}

    def act(envs: list[TwoRoomEnv], obs: np.ndarray, done: np.ndarray) -> np.ndarray:
        o = torch.from_numpy(obs)
        with torch.no_grad():
            prev = state["s"]
            s = model.encode(o) if prev is None else model.update(prev, state["a"], o)
        # plan for unfinished episodes only (the CEM cold-starts when that set shrinks)
        active = torch.from_numpy(~done)
        a = torch.zeros(len(envs), 2)
        planner.set_goal(goal_rep[active])
        a[active] = planner.plan(model, s[active], explore=False)
        state["s"], state["a"] = s, a
        return a.numpy()

    t0 = time.time()
    out = run_policy(envs, args.budget, act)
    out["eval_seconds"] = time.time() - t0
    model.train()
    return out


class OracleModel:
    """The true two-room dynamics as a 'latent model' whose rep is the (x, y) position."""

    def __init__(self, env: TwoRoomEnv) -> None:
        self.env = env

    def transition(self, state: State, action: torch.Tensor) -> State:
        pos = self.env.move_batch(state.tensors["rep"].double().numpy(), action.numpy())
        return State({"rep": torch.from_numpy(pos).float()})


def eval_oracle(args: argparse.Namespace, n: int, seed: int) -> Result:
    """The same CEM planner on the true dynamics and true positions: the planner's ceiling."""
    envs = eval_episodes(n, seed)
    gen = torch.Generator().manual_seed(seed)
    cem = CEM(2, args.horizon, args.samples, args.elites, args.iterations, generator=gen)
    planner, oracle = GoalPlanner(cem, args.intermediate, args.repeat), OracleModel(envs[0])
    goal = torch.tensor(np.stack([e.goal for e in envs]), dtype=torch.float32)

    def act(envs: list[TwoRoomEnv], obs: np.ndarray, done: np.ndarray) -> np.ndarray:
        pos = torch.tensor(np.stack([e.pos for e in envs]), dtype=torch.float32)
        active = torch.from_numpy(~done)
        a = torch.zeros(len(envs), 2)
        planner.set_goal(goal[active])
        a[active] = planner.plan(oracle, State({"rep": pos[active]}), explore=False)
        return a.numpy()

    return run_policy(envs, args.budget, act)


def eval_random(n: int, seed: int, budget: int) -> Result:
    rng = np.random.default_rng(seed)
    return run_policy(
        eval_episodes(n, seed), budget, lambda e, o, d: rng.uniform(-1, 1, (len(e), 2))
    )


def eval_expert(n: int, seed: int, budget: int) -> Result:
    return run_policy(
        eval_episodes(n, seed),
        budget,
        lambda envs, o, d: np.stack([expert_action(e, e.pos, e.goal) for e in envs]),
    )


def train_variant(
    reg: str, data: OfflineDataset, args: argparse.Namespace, env: TwoRoomEnv
) -> dict[str, Any]:
    """Train `jepa:small` with regularizer `reg`; log metrics and mid-training success."""
    torch.manual_seed(args.seed)
    model = create_world_model(
        "jepa:small",
        env.observation_space,
        env.action_space,
        seed=args.seed,
        regularizer=reg,
        sigreg_t_max=args.sigreg_t_max,
    )
    assert isinstance(model, JEPA)
    ckpt = Path(args.ckpt_dir) / f"jepa_small_{reg}.safetensors"
    if args.eval_only:
        load_model(model, str(ckpt))
        final = eval_planner(model, args, args.eval_episodes, seed=args.eval_seed)
        print(reg, "final", final, flush=True)
        return {"regularizer": reg, "train_log": [], "success_over_training": [], "final": final}
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    stream = data.iterate(args.batch, args.seq, seed=args.seed)
    log: list[dict[str, float]] = []
    mids: list[Result] = []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        loss, metrics = model.loss(next(stream))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.config.grad_clip)
        opt.step()
        model.update_target()
        if step % 25 == 0 or step == 1:
            row = {k: float(v) for k, v in metrics.items()}
            row.update(step=step, seconds=time.time() - t0)
            log.append(row)
            print(reg, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        if step % args.eval_every == 0 and step < args.steps:
            mid = eval_planner(model, args, args.mid_episodes, seed=args.eval_seed)
            mid["step"] = step
            mids.append(mid)
            print(reg, "mid-eval", mid, flush=True)
    train_seconds = time.time() - t0
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(ckpt))
    final = eval_planner(model, args, args.eval_episodes, seed=args.eval_seed)
    final["step"] = args.steps
    mids.append({**final})
    print(reg, "final", final, flush=True)
    return {
        "regularizer": reg,
        "config": asdict(model.config),
        "train_seconds": train_seconds,
        "train_log": log,
        "success_over_training": mids,
        "final": final,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    panels = [("pred_loss", "1-step prediction MSE"), ("emb_std", "mean per-dim std of rep")]
    panels.append(("eff_rank", "effective rank of rep"))
    for ax, (key, title) in zip(axes[:3], panels, strict=True):
        for run in result["runs"]:
            steps = [r["step"] for r in run["train_log"]]
            ax.plot(steps, [r[key] for r in run["train_log"]], label=run["regularizer"])
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.legend()
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")  # the ablation's collapse is a shrinking scale
    ax = axes[3]
    for run in result["runs"]:
        pts = run["success_over_training"]
        ax.plot([p["step"] for p in pts], [p["success_rate"] for p in pts], "o-")
        ax.lines[-1].set_label(f"JEPA+CEM ({run['regularizer']})")
    ax.axhline(result["random"]["success_rate"], color="gray", ls="--", label="random actions")
    ax.axhline(result["expert"]["success_rate"], color="green", ls=":", label="scripted expert")
    if "oracle_planner" in result:
        oracle = result["oracle_planner"]["success_rate"]
        ax.axhline(oracle, color="purple", ls="-.", label="CEM on true dynamics")
    ax.set_ylim(-0.05, 1.05)
    a = result["args"]
    ax.set_title(f"goal-reaching success ({a['budget']}-step budget)")
    ax.text(
        0.02,
        0.5,
        f"mid-training: {a['mid_episodes']} episodes\nlast point: {a['eval_episodes']} episodes",
        transform=ax.transAxes,
        fontsize=8,
    )
    ax.set_xlabel("training step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    if args.replot:
        out = Path(args.out)
        plot(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".png"))
        return
    env = make_env()
    data_dir = Path(args.data + ("_quick" if args.quick else ""))
    rec = RecordConfig(episodes=args.episodes, episode_length=args.episode_length, seed=args.seed)
    meta = data_dir / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text())["record"] != asdict(rec):
        t0 = time.time()
        record_tworoom(data_dir, rec)
        print(f"recorded {args.episodes} episodes in {time.time() - t0:.1f}s", flush=True)
    data = OfflineDataset(data_dir)
    result: dict[str, Any] = {"args": vars(args), "dataset": data.meta}
    result["random"] = eval_random(args.eval_episodes, args.eval_seed, args.budget)
    result["expert"] = eval_expert(args.eval_episodes, args.eval_seed, args.budget)
    result["oracle_planner"] = eval_oracle(args, args.eval_episodes, args.eval_seed)
    print("random", result["random"], "expert", result["expert"], flush=True)
    print("oracle planner", result["oracle_planner"], flush=True)
    result["runs"] = []
    out = Path(args.out + ("_quick" if args.quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.baselines_only:
        out.with_name(out.name + "_baselines.json").write_text(json.dumps(result, indent=1))
        return
    for reg in args.variants.split(","):
        result["runs"].append(train_variant(reg, data, args, env))
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        plot(result, out.with_suffix(".png"))
    print("wrote", out.with_suffix(".json"), out.with_suffix(".png"), flush=True)


if __name__ == "__main__":
    main()
