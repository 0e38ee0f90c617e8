"""``compile=True``: every family's compiled update pieces and acting step trace without graph
breaks, do not recompile for a second batch of the same shape, and match eager results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch._dynamo
import torch._inductor.config
from test_update_guard import batch_for

from worldflux.agents import Agent, make_agent
from worldflux.core.exceptions import ConfigError
from worldflux.core.state import State
from worldflux.models.tdmpc2.losses import policy_loss, world_model_loss

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def agent_for(name: str, **options: Any) -> Agent:
    return make_agent(name, VEC, CONT, seed=0, agent_options=options)


def compiled_paths(agent: Agent) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """(name, eager function, args) of each function the agent compiles, on a debug batch."""
    batch, obs = batch_for(agent), torch.rand(3, 6) * 2 - 1
    model: Any = agent.model
    if model.family == "tdmpc2":
        _, _, latents = world_model_loss(model, batch)
        return [
            ("wm_loss", world_model_loss, (model, batch)),
            ("pi_loss", policy_loss, (model, latents.detach())),
            ("act", agent._encode_and_plan, (obs, True)),  # type: ignore[attr-defined]
        ]
    if model.family == "dreamerv3":
        _, _, post = model.world_model_loss(batch)
        start = State({k: v.detach().flatten(0, 1) for k, v in post.tensors.items()})
        init = model.initial_state(3)
        carry = (init["deter"], init["stoch"], torch.zeros(3, 2), obs, True)
        return [
            ("wm_loss", model.world_model_loss, (batch,)),
            ("imagine_loss", model.actor_critic.imagine_loss, (model, start, None)),
            ("act", agent._filter_and_act, carry),  # type: ignore[attr-defined]
        ]
    return [("loss", model.loss, (batch,))]


@pytest.mark.parametrize("name", ["dreamerv3:debug", "tdmpc2:debug", "jepa:debug"])
def test_no_graph_breaks(name: str) -> None:
    agent = agent_for(name)
    agent.model.train()
    for path, fn, args in compiled_paths(agent):
        torch._dynamo.reset()
        report = torch._dynamo.explain(fn)(*args)
        assert report.graph_break_count == 0, (path, report.break_reasons)


@pytest.fixture(params=["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The torch.compile backend: aot_eager (tracing + autograd, seconds) in the quick suite;
    inductor (code generation, minutes for DreamerV3 on a shared CPU) under ``-m slow``."""
    real = torch.compile

    def compile_with(fn: Any, mode: str = "default") -> Any:
        return real(fn, mode=mode) if request.param == "inductor" else real(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_with)
    if request.param == "inductor":  # random ops draw from eager's RNG stream, as eager does
        monkeypatch.setattr(torch._inductor.config, "fallback_random", True, raising=False)
    torch._dynamo.reset()
    return str(request.param)


@pytest.mark.parametrize(
    "name", [pytest.param("dreamerv3:debug", marks=pytest.mark.slow), "tdmpc2:debug", "jepa:debug"]
)  # DreamerV3: ~30 s of tracing on a shared CPU
def test_compiled_update_matches_eager_and_does_not_recompile(name: str, backend: str) -> None:
    """The first update's losses (before any step: Adam amplifies float noise in later weights)
    equal eager ones; a second batch of the same shape runs without recompiling."""
    eager, compiled = agent_for(name), agent_for(name, compile=True)
    first, second = batch_for(eager, 0), batch_for(eager, 1)
    got = {}
    for agent in (eager, compiled):
        torch.manual_seed(0)  # imagination and policy samples
        got[agent is compiled] = agent.update(first)
    with torch._dynamo.config.patch(error_on_recompile=True):
        metrics = compiled.update(second)
    assert float(metrics["nonfinite"]) == 0.0
    loss_keys = [k for k in got[False] if k.endswith("loss")]
    assert loss_keys
    for key in loss_keys:
        torch.testing.assert_close(got[True][key], got[False][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dreamerv3:debug", "tdmpc2:debug"])
def test_compiled_acting_matches_eager_and_does_not_recompile(name: str, backend: str) -> None:
    eager, compiled = agent_for(name), agent_for(name, compile=True)
    obs = [torch.rand(3, 6) * 2 - 1 for _ in range(3)]
    first = torch.zeros(3, dtype=torch.bool)
    results = []
    for agent in (eager, compiled):
        torch.manual_seed(0)
        state, actions = None, []
        for i, o in enumerate(obs):
            if i == 2:
                torch._dynamo.config.error_on_recompile = agent is compiled
            try:
                action, state = agent.act(o, state, explore=True, is_first=first)
            finally:
                torch._dynamo.config.error_on_recompile = False
            actions.append(action)
        results.append(torch.stack(actions))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


def test_bad_options_name_the_argument() -> None:
    with pytest.raises(ConfigError, match="compile_mode"):
        agent_for("tdmpc2:debug", compile=True, compile_mode="fast")
    with pytest.raises(ConfigError, match="precision"):
        agent_for("tdmpc2:debug", precision="fp8")


def test_cli_overrides_reach_the_agent() -> None:
    """``worldflux train tdmpc2:debug --env Pendulum-v1 compile=true precision=bf16``."""
    from worldflux.training.run_config import parse_overrides

    config = parse_overrides("tdmpc2:debug", "Pendulum-v1", ["compile=true", "precision=bf16"])
    assert config.agent == {"compile": True, "precision": "bf16"}
    agent = agent_for("tdmpc2:debug", **config.agent)
    assert agent.acceleration.compile and agent.acceleration.precision == "bf16"  # type: ignore[attr-defined]
