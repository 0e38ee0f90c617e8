"""DreamerV3 agent: acts with the actor on the filtered State; learns the world model on replayed
sequences and the actor-critic in imagination from every posterior state of the batch.

Acting memory (the `State` returned by `act`): the RSSM posterior (``deter``, ``stoch``) plus
``prev_action`` (N, A), the action that led to the current observation. Rows whose episode just
began (``is_first``) restart from the initial state and a zero action.

Train ratio: replayed steps per env step (DreamerV3's unit); one update replays
``batch_size * seq_len`` steps (reference: 16 x 64 and ratio 512 -> 0.5 updates per env step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worldflux.agents.base import Agent, NonFiniteGuard
from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError
from worldflux.core.model import Metrics
from worldflux.core.state import State
from worldflux.models.dreamerv3 import DreamerV3

REFERENCE_TRAIN_RATIO = 512.0


class DreamerAgent(Agent):
    """DreamerV3 acting and learning (see the module docstring)."""

    model: DreamerV3
    within_episode = False  # sequences cross episode boundaries; is_first resets the RSSM

    def __init__(
        self,
        model: DreamerV3,
        seed: int = 0,
        batch_size: int = 16,
        seq_len: int = 64,
        train_ratio: float = REFERENCE_TRAIN_RATIO,
    ) -> None:
        if not isinstance(model, DreamerV3):
            raise ConfigError(
                f"model: expected a DreamerV3 world model, got {type(model).__name__}"
            )
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {value!r}")
        if not isinstance(train_ratio, int | float) or train_ratio <= 0:
            raise ConfigError(f"train_ratio: expected a number > 0, got {train_ratio!r}")
        del seed  # weights are seeded by create_world_model; sampling uses torch's RNG
        self.model = model
        self.batch_size, self.seq_len = batch_size, seq_len
        self.default_train_ratio = float(train_ratio)
        self.opt = model.make_optimizers()
        self.guard = NonFiniteGuard([self.opt.wm, self.opt.actor, self.opt.critic])

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, Tensor],
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Filter the observation into the posterior, then act with the actor. -> (N, A)."""
        model = self.model
        n = next(iter(obs.values())).shape[0]
        init = model.initial_state(n)
        fresh = {
            "deter": init.tensors["deter"],
            "stoch": init.tensors["stoch"],
            "prev_action": torch.zeros(n, model.action_spec.dim, device=model.device),
        }
        if state is None:
            carry = fresh
        else:
            carry = dict(state.tensors)
            if is_first is not None and bool(is_first.any()):
                mask = is_first.to(model.device)
                carry = {k: torch.where(mask.view(-1, *([1] * (v.dim() - 1))), fresh[k], v)
                         for k, v in carry.items()}  # fmt: skip
        rssm = State({"deter": carry["deter"], "stoch": carry["stoch"]})
        post = model.update(
            rssm, carry["prev_action"], obs if model.obs_spec.is_dict else obs["obs"]
        )
        action = model.policy(post, sample=explore)
        new = {
            "deter": post.tensors["deter"],
            "stoch": post.tensors["stoch"],
            "prev_action": action,
        }
        return action, State(new)

    def update(self, batch: Batch) -> Metrics:
        """The model's own update (world model, then actor-critic in imagination from the
        detached posteriors); NaN/Inf gradients skip the affected optimizer step, and the
        model's buffers (return normaliser) are rolled back when that happens."""
        model = self.model
        model.train()
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        self.guard.reset()
        metrics = model.train_step(batch, self.opt)
        out: Metrics = {k: float(v) for k, v in metrics.items()}
        if self.guard.skipped:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
        out["nonfinite"] = float(self.guard.skipped > 0)
        return out

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"wm": self.opt.wm, "actor": self.opt.actor, "critic": self.opt.critic}
