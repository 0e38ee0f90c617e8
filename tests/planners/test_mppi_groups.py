"""MPPI with one categorical per action group (MultiDiscrete), against a stub whose optimum is
known, and a stored reference showing that a plain Discrete space plans as it did before groups.

The reference (``data/mppi_discrete_reference.json``) was recorded with the one-categorical
planner that preceded groups; the case runs in float64 so that other CPUs' last-bit rounding
stays far below the tolerance. Record again only for an intended change of maths:

    python tests/planners/test_mppi_groups.py --record
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_mppi import DiscreteStub
from torch import Tensor

from worldflux.core.spec import ActionSpec
from worldflux.core.state import State
from worldflux.planners import MPPI

DATA = Path(__file__).parent / "data" / "mppi_discrete_reference.json"
GROUPS = (3, 4)  # MultiDiscrete([3, 4]): one-hots of 3 and 4 choices, A = 7


class WeightedStub(DiscreteStub):
    """Reward and value (action * target).sum(-1) for a per-env weight vector ``target``
    (B, A); the prior always picks choice 0 of every group (a useless prior)."""

    def __init__(self, groups: tuple[int, ...]) -> None:
        super().__init__(sum(groups))
        self.action_spec = ActionSpec(sum(groups), True, groups)

    def policy(self, state: State, sample: bool = True) -> Tensor:
        target = state.tensors["target"]
        first = [torch.eye(g, dtype=target.dtype)[0] for g in self.action_spec.groups]
        return torch.cat(first).expand_as(target)


def one_hots(idx: Tensor, groups: tuple[int, ...]) -> Tensor:
    """Indices (B, G) -> concatenated one-hots (B, sum(groups))."""
    parts = [torch.nn.functional.one_hot(idx[:, i], g) for i, g in enumerate(groups)]
    return torch.cat(parts, -1).float()


def assert_one_hot_per_group(action: Tensor, groups: tuple[int, ...]) -> None:
    assert set(action.unique().tolist()) <= {0.0, 1.0}
    for part in action.split(groups, -1):
        assert torch.equal(part.sum(-1), torch.ones(action.shape[0], dtype=action.dtype))


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_multi_discrete_finds_target_per_group(batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    idx = torch.stack([torch.randint(0, g, (batch,), generator=gen) for g in GROUPS], 1)
    state = State({"target": one_hots(idx, GROUPS)})
    m = MPPI(samples=256, elites=32, pi_trajs=8, iterations=4,
             generator=torch.Generator().manual_seed(0))  # fmt: skip
    act = m.plan(WeightedStub(GROUPS), state, explore=False)
    assert act.shape == (batch, 7)
    assert_one_hot_per_group(act, GROUPS)
    assert torch.equal(act, state.tensors["target"])
    assert m.last_mean is not None
    for part in m.last_mean.split(GROUPS, -1):  # (B, H, g) probabilities, each group its own
        torch.testing.assert_close(part.sum(-1), torch.ones(batch, m.horizon))
        assert part.min() >= m.std_min / part.shape[-1] - 1e-7  # the floor, per group
    explored = m.plan(WeightedStub(GROUPS), state, explore=True)
    assert_one_hot_per_group(explored, GROUPS)


def test_multi_discrete_state_round_trip_and_reset_per_group() -> None:
    state = State({"target": one_hots(torch.tensor([[2, 1], [0, 3]]), GROUPS)})
    m = MPPI(samples=64, elites=8, pi_trajs=0, iterations=2)
    m.plan(WeightedStub(GROUPS), state, explore=False)
    saved = m.state_dict()
    assert saved["discrete"] is True and saved["groups"] == [3, 4]
    fresh = MPPI()
    fresh.load_state_dict(saved)
    fresh.reset(torch.tensor([True, False]))
    prev = fresh.state_dict()["prev"]
    uniform = torch.tensor([1 / 3] * 3 + [1 / 4] * 4).expand(3, 7)
    assert torch.equal(prev[0], uniform) and torch.equal(prev[1], saved["prev"][1])
    with pytest.raises(Exception, match="groups"):
        fresh.load_state_dict({**saved, "groups": [3, 5]})  # sums to 8, not A = 7


def discrete_reference_case(mppi_cls: Any = MPPI) -> dict[str, list]:
    """Three float64 plans of a Discrete(5) stub with soft per-env weights, a warm start, a
    reset of two envs, exploration and a prior: chosen indices and final probabilities."""
    gen = torch.Generator().manual_seed(0)
    weights = 0.3 * torch.rand(3, 5, generator=gen, dtype=torch.float64)  # close: soft elites
    state = State({"target": weights})
    m = mppi_cls(horizon=3, samples=32, elites=16, pi_trajs=4, iterations=2,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    out: dict[str, list] = {}
    for step, explore in enumerate((False, True, False)):
        act = m.plan(WeightedStub((5,)), state, explore=explore)
        out[f"index{step}"] = act.argmax(-1).tolist()
        out[f"mean{step}"] = m.last_mean.tolist()
        if step == 1:
            m.reset(torch.tensor([True, False, True]))
    return out


def test_discrete_plans_match_the_one_categorical_reference() -> None:
    ref, got = json.loads(DATA.read_text()), discrete_reference_case()
    assert sorted(ref) == sorted(got)
    for key, value in ref.items():
        if key.startswith("index"):
            assert got[key] == value, key
        else:
            torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(value),
                                       rtol=1e-12, atol=1e-12, msg=key)  # fmt: skip


if __name__ == "__main__" and "--record" in sys.argv:
    DATA.write_text(json.dumps(discrete_reference_case()) + "\n")
    print(f"wrote {DATA}")
