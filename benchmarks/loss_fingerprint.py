"""Bitwise fingerprint of every family's numbers: losses, metrics, actions and final weights.

Refactors that must not move a single bit (dtype plumbing, compile-friendly rewrites) are
checked by running this before and after and comparing the two files exactly:

    python benchmarks/loss_fingerprint.py record before.pt
    python benchmarks/loss_fingerprint.py record after.pt
    python benchmarks/loss_fingerprint.py compare before.pt after.pt

Each case builds a seeded model and agent, takes `model.loss(batch)` (with its gradients), then
alternates `agent.update(batch)` and `agent.act(obs)` on fixed random data. The data come from
their own generator, so a change in how the model draws random numbers shows up in the results
(the model's draws use the global RNG, seeded once per case).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from worldflux.agents import make_agent  # noqa: E402
from worldflux.core.batch import Batch  # noqa: E402

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
IMG = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
DISC = gym.spaces.Discrete(3)


@dataclass(frozen=True)
class Case:
    name: str  # "family:preset"
    obs: Any  # gymnasium observation space
    action: Any  # gymnasium action space
    seq_len: int  # T of the replayed batches (TD-MPC2: horizon + 1, set from its config)


CASES = {
    "dreamerv3-debug-vec-cont": Case("dreamerv3:debug", VEC, CONT, 8),
    "dreamerv3-debug-img-disc": Case("dreamerv3:debug", IMG, DISC, 4),
    "dreamerv3-size1m-vec-cont": Case("dreamerv3:size1m", VEC, CONT, 8),
    "tdmpc2-debug-vec-cont": Case("tdmpc2:debug", VEC, CONT, 0),
    "tdmpc2-debug-img-disc": Case("tdmpc2:debug", IMG, DISC, 0),
    "tdmpc2-1m-vec-cont": Case("tdmpc2:1m", VEC, CONT, 0),
    "jepa-debug-vec-cont": Case("jepa:debug", VEC, CONT, 8),
    "jepa-debug-img-disc": Case("jepa:debug", IMG, DISC, 6),
}
BATCH, UPDATES, ENVS = 4, 3, 2


def _obs(space: Any, lead: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if space.dtype == np.uint8:
        return torch.randint(0, 256, (*lead, *space.shape), generator=gen, dtype=torch.uint8)
    return torch.rand(*lead, *space.shape, generator=gen) * 2 - 1


def _actions(space: Any, lead: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if isinstance(space, gym.spaces.Discrete):
        idx = torch.randint(0, int(space.n), lead, generator=gen)
        return torch.nn.functional.one_hot(idx, int(space.n)).float()
    return torch.rand(*lead, *space.shape, generator=gen) * 2 - 1


def make_batch(case: Case, seq_len: int, gen: torch.Generator) -> Batch:
    """A (BATCH, seq_len) batch with one episode start per row and one terminal row."""
    lead = (BATCH, seq_len)
    is_first = torch.zeros(lead, dtype=torch.bool)
    is_first[:, 0] = True
    is_last = torch.zeros(lead, dtype=torch.bool)
    is_last[:, -1] = True
    action = _actions(case.action, lead, gen)
    action[:, 0] = 0.0
    return Batch(
        obs=_obs(case.obs, lead, gen),
        action=action,
        reward=torch.randn(lead, generator=gen),
        is_first=is_first,
        is_terminal=is_last & (torch.arange(BATCH) == 0).unsqueeze(1),
        is_last=is_last,
    )


def _flat(prefix: str, values: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
    for k, v in values.items():
        out[f"{prefix}/{k}"] = torch.as_tensor(v).detach().clone()


def run_case(key: str, case: Case) -> dict[str, torch.Tensor]:
    """Every number the case produces, by name."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    agent: Any = make_agent(case.name, case.obs, case.action, seed=0)
    model = agent.model
    seq_len = case.seq_len or model.config.horizon + 1
    out: dict[str, torch.Tensor] = {}
    model.train()
    loss, metrics = model.loss(make_batch(case, seq_len, gen))
    loss.backward()
    out["loss"] = loss.detach().clone()
    _flat("loss_metrics", metrics, out)
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad/{name}"] = p.grad.clone()
    model.zero_grad(set_to_none=True)
    if model.family == "jepa":
        agent.set_goal(_obs(case.obs, (ENVS,), gen))
    state = None
    for step in range(UPDATES):
        _flat(f"learn{step}", agent.update(make_batch(case, seq_len, gen)), out)
        is_first = torch.tensor([step == 0, False])
        action, state = agent.act(
            _obs(case.obs, (ENVS,), gen), state, explore=True, is_first=is_first
        )
        out[f"act{step}"] = action.clone()
    for name, t in model.state_dict().items():
        out[f"final/{name}"] = t.clone()
    return {f"{key}/{k}": v for k, v in out.items()}


def compare(a_path: str, b_path: str) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    bad = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        same = a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
        if not same:
            bad.append(k)
    print(f"{len(a)} vs {len(b)} tensors; {len(bad)} differ")
    for k in bad[:40]:
        print("  DIFF", k)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("path")
    rec.add_argument("--cases", nargs="*", default=sorted(CASES))
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    args = parser.parse_args()
    if args.cmd == "compare":
        return compare(args.a, args.b)
    torch.set_num_threads(1)
    results: dict[str, torch.Tensor] = {}
    for key in args.cases:
        results.update(run_case(key, CASES[key]))
        print(key, "done", flush=True)
    torch.save(results, args.path)
    print(f"{len(results)} tensors -> {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
