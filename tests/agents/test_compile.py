"""``compile=True``: every family's compiled update pieces and acting step trace without graph
breaks, do not recompile for a second batch of the same shape, and match eager results.
DreamerV3's pieces are its regions (`DreamerV3.accelerate`): each step of its loops and the
batched parts around them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch._dynamo
import torch._inductor.config
from test_update_guard import batch_for
from torch._dynamo.utils import counters

from worldflux.agents import Agent, make_agent
from worldflux.core.exceptions import ConfigError, SpecError
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
        return dreamer_regions(agent, batch, obs)
    return [("loss", model.loss, (batch,))]


def dreamer_regions(agent: Agent, batch: Any, obs: torch.Tensor) -> list[Any]:
    """DreamerV3 compiles by regions (`DreamerV3.accelerate`): each region with its args."""
    model: Any = agent.model
    rssm, ac = model.rssm, model.actor_critic
    seq = model.check_obs(batch.obs, arg="batch.obs", batch_dims=2)
    tokens = model.encode_sequence(seq)
    keep, actions, emb, tok = rssm.observe_inputs(tokens, batch.action, batch.is_first)
    deter, stoch = rssm.initial(batch.action.shape[0])
    post = rssm.observe(tokens, batch.action, batch.is_first)
    _, _, state = model.sequence_loss(post, seq, batch)
    start = State({k: v.detach().flatten(0, 1) for k, v in state.tensors.items()})
    traj = ac.imagine(model, start)
    feat = traj["feat"][:, 1]
    img_carry = feat.split([model.config.deter, feat.shape[-1] - model.config.deter], -1)
    init = model.initial_state(3)
    carry = (init["deter"], init["stoch"], torch.zeros(3, 2), obs, True)
    step = (keep[:, 1], actions[:, 1], emb[:, 1], tok[:, 1])  # (B, T, ..) -> (B, ..)
    return [
        ("encode_sequence", model.encode_sequence, (seq,)),
        ("observe_inputs", rssm.observe_inputs, (tokens, batch.action, batch.is_first)),
        ("observe_step", rssm.observe_step, (deter, stoch, *step)),
        ("sequence_loss", model.sequence_loss, (post, seq, batch)),
        ("imagine_step", ac.imagine_step, (rssm, *img_carry, feat)),
        ("trajectory_loss", ac.trajectory_loss, (model, traj, None)),
        ("act", agent._filter_and_act, carry),  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize("name", ["dreamerv3:debug", "tdmpc2:debug", "jepa:debug"])
def test_no_graph_breaks(name: str) -> None:
    agent = agent_for(name)
    agent.model.train()
    for path, fn, args in compiled_paths(agent):
        torch._dynamo.reset()
        report = torch._dynamo.explain(fn)(*args)
        assert report.graph_break_count == 0, (path, report.break_reasons)


@pytest.fixture(params=["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The torch.compile backend: aot_eager (tracing + autograd, seconds) in the quick suite;
    inductor (code generation, about a minute for DreamerV3 on a shared CPU) under ``-m slow``.
    Random ops draw from eager's RNG stream under inductor too (``fallback_random``)."""
    real = torch.compile

    def compile_with(fn: Any, **options: Any) -> Any:
        return real(fn, **options) if request.param == "inductor" else real(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_with)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=request.param == "inductor"):
        yield str(request.param)


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
    bad = batch_for(eager, 2)
    bad.is_terminal[1, 2] = True  # not is_last: every unchecked batch is checked, not the first
    with pytest.raises(SpecError, match="is_terminal"):
        compiled.update(bad)
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


def test_dreamer_regions_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each DreamerV3 region compiles once, its loop's T (H) calls included: the first step's
    carry requires grad as the later ones' do (dynamo guards on it)."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **_: real(fn, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    agent = agent_for("dreamerv3:debug", compile=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        agent.update(batch_for(agent, 0))
    assert counters["stats"]["unique_graphs"] == 6  # see DreamerV3.accelerate


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
