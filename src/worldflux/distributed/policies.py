"""Small acting policies for collectors: uniform random and a torch MLP, plus an Agent adapter.

All follow `worldflux.distributed.worker.CollectorPolicy`: ``act(obs, state, *, explore, is_first)``
returns model-format actions (one-hot for discrete spaces, [-1, 1] for continuous ones).
Module-level classes, so ``functools.partial(MLPPolicy, ...)`` pickles for ``spawn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.spec import ActionSpec, Obs
from worldflux.core.state import State
from worldflux.nn.mlp import MLP


class RandomPolicy:
    """Uniform random actions from a seeded generator; nothing to sync."""

    def __init__(self, action_dim: int, discrete: bool, seed: int = 0) -> None:
        if action_dim < 1:
            raise ConfigError(f"action_dim: expected an int >= 1, got {action_dim}")
        self.spec = ActionSpec(int(action_dim), bool(discrete))
        self.gen = torch.Generator().manual_seed(seed)

    def act(
        self, obs: Obs, state: State | None, *, explore: bool, is_first: Tensor
    ) -> tuple[Tensor, State | None]:
        n = int(is_first.shape[0])
        if self.spec.discrete:
            idx = torch.randint(self.spec.dim, (n,), generator=self.gen)
            return F.one_hot(idx, self.spec.dim).float(), None
        return torch.rand(n, self.spec.dim, generator=self.gen) * 2 - 1, None

    def acting_module(self) -> nn.Module | None:
        return None


class MLPPolicy(nn.Module):
    """An MLP from a flat vector observation (a Tensor (E, D)) to actions (E, A).

    Discrete: samples the softmax with `explore`, else argmax; continuous: tanh mean plus
    Gaussian noise of std `noise` with `explore`.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        discrete: bool,
        hidden: int = 64,
        layers: int = 2,
        noise: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or action_dim < 1 or hidden < 1 or layers < 1:
            raise ConfigError(
                "MLPPolicy: obs_dim, action_dim, hidden and layers must be >= 1, got "
                f"{obs_dim}, {action_dim}, {hidden}, {layers}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = MLP(obs_dim, hidden, action_dim, layers, norm="layer", act="silu")
        self.discrete, self.action_dim, self.noise = discrete, action_dim, noise
        self.gen = torch.Generator().manual_seed(seed + 1)

    def forward(self, obs: Tensor) -> Tensor:
        """(E, D) float -> (E, A) logits (discrete) or pre-tanh means."""
        return self.net(obs.float())

    def act(
        self, obs: Obs, state: State | None, *, explore: bool, is_first: Tensor
    ) -> tuple[Tensor, State | None]:
        if not isinstance(obs, Tensor):
            raise SpecError(
                f"obs: MLPPolicy expected a flat vector observation, a Tensor (E, D), got "
                f"{type(obs).__name__}"
            )
        out = self(obs)
        if self.discrete:
            if explore:
                idx = torch.multinomial(out.softmax(-1), 1, generator=self.gen).squeeze(-1)
            else:
                idx = out.argmax(-1)
            return F.one_hot(idx, self.action_dim).float(), None
        mean = torch.tanh(out)
        if explore:
            mean = mean + self.noise * torch.randn(mean.shape, generator=self.gen)
        return mean.clamp(-1.0, 1.0), None

    def acting_module(self) -> nn.Module | None:
        return self


class AgentPolicy:
    """Adapts a `worldflux.agents.Agent`, built by `agent_fn` inside the collector.

    `sync` names the agent's nn.Module attributes whose weights the learner broadcasts (None:
    every nn.Module attribute, e.g. TD-MPC2's ``model``). The learner publishes
    ``AgentPolicy.acting_modules(its_agent, sync)``, which has the same state-dict keys.
    `agent_fn` must pickle under ``spawn``: e.g. ``functools.partial(make_agent, ...)``.
    """

    def __init__(self, agent_fn: Callable[[], Any], sync: tuple[str, ...] | None = None) -> None:
        self.agent = agent_fn()
        self.module = self.acting_modules(self.agent, sync)

    @staticmethod
    def acting_modules(agent: Any, sync: tuple[str, ...] | None = None) -> nn.ModuleDict:
        """``nn.ModuleDict`` of `agent`'s `sync` attributes (sharing their parameters)."""
        if sync is None:
            sync = tuple(sorted(k for k, v in vars(agent).items() if isinstance(v, nn.Module)))
        missing = [n for n in sync if not isinstance(getattr(agent, n, None), nn.Module)]
        if missing or not sync:
            raise ConfigError(
                f"sync: expected names of nn.Module attributes of the agent, got {list(sync)} "
                f"({missing} are not)"
            )
        return nn.ModuleDict({n: getattr(agent, n) for n in sync})

    def act(
        self, obs: Obs, state: State | None, *, explore: bool, is_first: Tensor
    ) -> tuple[Tensor, State | None]:
        with torch.no_grad():
            return self.agent.act(obs, state, explore=explore, is_first=is_first)

    def acting_module(self) -> nn.Module | None:
        return self.module

    def on_episode_start(self, env_ids: list[int], envs: list[Any]) -> None:
        """`Agent.on_episode_start`: episodes began in ``envs[i]`` for i in `env_ids` (a
        goal-conditioned agent reads their goals; a `ConfigError` when an env has none)."""
        with torch.no_grad():
            self.agent.on_episode_start(env_ids, envs)
