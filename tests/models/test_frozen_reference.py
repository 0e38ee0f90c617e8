"""Frozen references: every family's numbers on a fixed tiny model and a fixed batch, stored in
the repo (``data/frozen_reference.json``), so any numeric drift is caught.

In float64, where different CPUs' rounding differs only in the last bits: a refactor that keeps
the maths passes at rtol 1e-9, a change of maths (an epsilon, a loss scale, an RNG draw order)
does not. Record new values only for an intended change of maths, and say so in the commit:

    python tests/models/test_frozen_reference.py --record
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflux.core.batch import Batch
from worldflux.core.model import WorldModel
from worldflux.core.registry import FAMILIES, create_world_model

DATA = Path(__file__).parent / "data" / "frozen_reference.json"
OBS = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
ACTION = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
B, H = 3, 3  # batch rows; imagined steps


def _batch(model: WorldModel, gen: torch.Generator) -> Batch:
    T = model.config.horizon + 1 if model.family == "tdmpc2" else 5
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    first[1, 3] = True  # an episode boundary inside one window
    last = torch.zeros(B, T, dtype=torch.bool)
    last[:, -1] = True
    last[1, 2] = True
    action = torch.rand(B, T, 2, generator=gen, dtype=torch.float64) * 2 - 1
    action[first] = 0.0
    return Batch(
        obs=torch.rand(B, T, 6, generator=gen, dtype=torch.float64) * 2 - 1,
        action=action,
        reward=torch.randn(B, T, generator=gen, dtype=torch.float64),
        is_first=first,
        is_terminal=last & (torch.arange(B) == 0).unsqueeze(1),
        is_last=last,
    )


def compute(family: str) -> dict[str, float]:
    """Loss, metrics, gradient norm and an imagined rollout of `family`'s debug preset."""
    model = create_world_model(f"{family}:debug", OBS, ACTION, seed=0).double().train()
    gen = torch.Generator().manual_seed(0)
    batch = _batch(model, gen)
    torch.manual_seed(1)  # the model's own draws (latent samples, ensemble members)
    loss, metrics = model.loss(batch)
    loss.backward()
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    out = {"loss": float(loss.detach()), "grad_norm": float(torch.stack(grads).norm())}
    out.update({f"metric/{k}": float(v) for k, v in sorted(metrics.items())})
    with torch.no_grad():
        state = model.encode(batch.obs[:, 0])
        actions = torch.rand(B, H, 2, generator=gen, dtype=torch.float64) * 2 - 1
        traj = model.rollout(state, actions=actions)
    for key, value in sorted(traj.states.tensors.items()):  # a fixed random projection of each
        weights = torch.rand(value.shape, generator=gen, dtype=torch.float64)
        out[f"rollout/{key}"] = float((value.double() * weights).sum())
    if traj.rewards is not None:
        out["rollout/rewards"] = float(traj.rewards.sum())
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_numbers_match_the_frozen_reference(family: str) -> None:
    want = json.loads(DATA.read_text())[family]
    got = compute(family)
    assert sorted(got) == sorted(want), "the set of recorded quantities changed"
    drift = {k: (got[k], want[k]) for k in want if not np.isclose(got[k], want[k], 1e-9, 1e-12)}
    assert not drift, f"{family}: numbers moved (got, frozen): {drift}"


def test_a_change_of_maths_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a different norm epsilon (1e-4 vs 1e-5) moves DreamerV3's numbers."""
    from worldflux.models.dreamerv3 import config as dreamer_config

    preset = dreamer_config.PRESETS["debug"]
    changed = type(preset)(**{**preset.__dict__, "norm_eps": 1e-4})
    monkeypatch.setitem(dreamer_config.PRESETS, "debug", changed)
    with pytest.raises(AssertionError, match="numbers moved"):
        test_numbers_match_the_frozen_reference("dreamerv3")


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    torch.set_num_threads(1)
    DATA.write_text(json.dumps({f: compute(f) for f in sorted(FAMILIES)}, indent=1) + "\n")
    print(f"wrote {DATA}")
