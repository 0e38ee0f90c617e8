"""Export a trained run as a pretrained agent shipped in the package (src/worldflux/pretrained/).

Loads the run's newest checkpoint, writes it with `save_pretrained`, then measures the return
exactly as ``worldflux eval pretrained:<name> --episodes N --seed S`` does (same loading code,
seeds and thread count) and writes that measurement into the card. Run:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_pretrained.py NAME RUN_DIR \
        --preset tdmpc2:1m --train-command "worldflux train ..." --description "..."
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from worldflux.agents.card import AgentCard, EvalRecord  # noqa: E402
from worldflux.agents.io import load_run_agent  # noqa: E402
from worldflux.agents.pretrained import SHIPPED, env_fn, load_pretrained  # noqa: E402
from worldflux.training.config import seed_everything  # noqa: E402
from worldflux.training.evaluate import evaluate  # noqa: E402
from worldflux.training.run_config import parse_value  # noqa: E402


def parse_options(items: list[str]) -> dict[str, object]:
    """``["k=v", ...]`` -> {k: v}, each value read as JSON (numbers, true/false) or kept as text."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option: expected KEY=VALUE, got {item!r}")
        out[key] = parse_value(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("name", help="shipped name, e.g. tdmpc2-1m-pendulum")
    p.add_argument("run_dir", help="run dir (its newest checkpoint) or checkpoint dir")
    p.add_argument("--preset", required=True)
    p.add_argument("--train-command", required=True)
    p.add_argument("--description", required=True)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--option",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="agent options to ship that the run did not set (acting only, e.g. JEPA's "
        "intermediate_weight=1.0); the evaluation below uses them",
    )
    args = p.parse_args()
    agent, run = load_run_agent(args.run_dir)
    agent.options = {**(agent.options or {}), **parse_options(args.option)}
    card = AgentCard(
        name=args.name,
        preset=args.preset,
        env_id=run.env_id,
        env_kwargs=run.env_options(),
        train_steps=int(run.trainer["steps"]),
        train_command=args.train_command,
        description=args.description,
    )
    folder = agent.save_pretrained(SHIPPED / args.name, card)
    torch.set_num_threads(1)  # as `worldflux eval` (--threads 1)
    seed_everything(args.seed)
    shipped = load_pretrained(args.name)
    result = evaluate(shipped, env_fn(card), args.episodes, args.seed)
    record = EvalRecord(
        return_mean=round(result["return_mean"], 2),
        return_std=round(result["return_std"], 2),
        episodes=args.episodes,
        seed=args.seed,
        command=f"worldflux eval pretrained:{args.name} --episodes {args.episodes} "
        f"--seed {args.seed}",
    )
    agent.save_pretrained(folder, dataclasses.replace(card, evaluation=record))
    sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
    print(f"{args.name}: return {record.return_mean} +- {record.return_std}; files {sizes}")


if __name__ == "__main__":
    main()
