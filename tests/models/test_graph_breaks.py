"""Every family's ``model.loss(batch)`` compiles as ONE graph: no graph break (no ``.item()``, no
data-dependent Python control), no recompilation for a second batch of the same shape.

Dynamo is what finds graph breaks, so the checks use the ``eager`` backend (capture only; the
``aot_eager`` dropout check adds the autograd trace): an inductor build of a debug loss takes a
minute or more on CPU and would find nothing more about breaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError
from worldflux.core.model import WorldModel
from worldflux.core.registry import FAMILIES, create_world_model
from worldflux.nn.ensemble import _dropout

OBS = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
ACTION = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

families = pytest.mark.parametrize("family", sorted(FAMILIES))


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _model(family: str) -> WorldModel:
    return create_world_model(f"{family}:debug", OBS, ACTION, seed=0).train()


def _batch(model: WorldModel, seed: int, B: int = 3) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    T = model.config.horizon + 1 if model.family == "tdmpc2" else 6
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_last = torch.zeros(B, T, dtype=torch.bool)
    is_last[:, -1] = True
    action = torch.rand(B, T, 2, generator=gen) * 2 - 1
    action[:, 0] = 0.0
    return Batch(
        obs=torch.rand(B, T, 6, generator=gen) * 2 - 1,
        action=action,
        reward=torch.randn(B, T, generator=gen),
        is_first=is_first,
        is_terminal=is_last & (torch.arange(B) == 0).unsqueeze(1),
        is_last=is_last,
    )


@families
def test_loss_has_no_graph_break(family: str) -> None:
    model = _model(family)
    explained = torch._dynamo.explain(model.loss)(_batch(model, 0))
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


@families
def test_same_shape_batch_does_not_recompile(family: str) -> None:
    model = _model(family)
    loss = torch.compile(model.loss, backend="eager", dynamic=False, fullgraph=True)
    loss(_batch(model, 0))[0].backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out, _ = loss(_batch(model, 1))
    out.backward()
    assert counters["stats"]["unique_graphs"] == 1


@families
def test_compiled_loss_equals_eager(family: str) -> None:
    """The compiled path (dense dropout, no flag check) computes the same numbers as eager."""
    model = _model(family)
    batch = _batch(model, 0)
    loss = torch.compile(model.loss, backend="eager", dynamic=False, fullgraph=True)
    torch.manual_seed(3)
    compiled, _ = loss(batch)
    torch.manual_seed(3)
    eager, _ = model.loss(batch)
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("shape", [(96, 2, 32), (7, 5)])
def test_compiled_dropout_draws_the_eager_positions(shape: tuple[int, ...]) -> None:
    """The dense keep-mask of compiled code zeroes the same positions as eager's sparse
    zeroing (the eager RNG, as the aot_eager backend keeps it), values and gradients."""

    def run(fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(5)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
        y = fn(x, 0.05, True)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).view(shape))
        assert x.grad is not None
        return y.detach(), x.grad

    eager = run(_dropout)
    compiled = run(torch.compile(_dropout, backend="aot_eager", fullgraph=True))
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    assert bool((eager[0] == 0).any())  # something was dropped


def test_flag_check_stays_at_the_boundary() -> None:
    """A terminal step that is not is_last: `validate` and the eager loss reject it; compiled
    code trusts a batch validated before the compiled region (no value read inside)."""
    model = _model("jepa")
    bad = _batch(model, 0)
    bad.is_terminal = bad.is_terminal.clone()
    bad.is_terminal[1, 2] = True
    with pytest.raises(SpecError, match="is_terminal"):
        bad.validate()
    with pytest.raises(SpecError, match="is_terminal"):
        model.loss(bad)
    bad.validate_layout(model.device)  # metadata only: passes
    explained = torch._dynamo.explain(lambda b: b.validate_in_loss(model.device).reward * 2)(bad)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
