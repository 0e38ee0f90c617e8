"""Agents: one per model family, written against the `WorldModel` contract (see `base.Agent`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from worldflux.agents.base import Agent, guarded_step
from worldflux.core.exceptions import RegistryError
from worldflux.core.options import check_options
from worldflux.core.registry import create_world_model, family_of


def _dreamer() -> type[Agent]:
    from worldflux.agents.dreamer import DreamerAgent

    return DreamerAgent


def _tdmpc2() -> type[Agent]:
    from worldflux.agents.tdmpc2 import TDMPC2Agent

    return TDMPC2Agent


def _jepa() -> type[Agent]:
    from worldflux.agents.jepa import JEPAAgent

    return JEPAAgent


AGENTS: dict[str, Callable[[], type[Agent]]] = {
    "dreamerv3": _dreamer,
    "tdmpc2": _tdmpc2,
    "jepa": _jepa,
}


def make_agent(
    model: str | Any,
    obs_space: Any,
    action_space: Any,
    seed: int = 0,
    device: torch.device | str = "cpu",
    model_overrides: dict[str, Any] | None = None,
    agent_options: dict[str, Any] | None = None,
    native_action_space: Any = None,
) -> Agent:
    """Build the world model ``"family:preset"`` (seeded) and wrap it in its family's agent.

    `agent_options` are keyword arguments of the agent class (e.g. ``act="policy"`` for TD-MPC2);
    unknown keys and values of the wrong type are a `ConfigError` naming the ``agent.`` option.
    `model` may also be a config object (see `create_world_model`). `native_action_space` is
    the env's own action space (``env.native_action_space``, e.g. Pendulum's Box(-2, 2)), in
    which `Agent.predict` answers. Both it and the options are recorded for `Agent.save`.
    """
    family = model.partition(":")[0] if isinstance(model, str) else family_of(model)[0]
    if family not in AGENTS:
        raise RegistryError(f"model: no agent for family {family!r}; known: {sorted(AGENTS)}")
    agent_cls: Any = AGENTS[family]()
    check_options(agent_cls, agent_options or {}, "agent.", skip=("model", "seed"))
    world_model = create_world_model(
        model, obs_space, action_space, device=device, seed=seed, **(model_overrides or {})
    )
    agent = agent_cls(world_model, seed=seed, **(agent_options or {}))
    agent.options = dict(agent_options or {})
    agent.native_action_space = native_action_space
    return agent


__all__ = ["AGENTS", "Agent", "guarded_step", "make_agent"]
