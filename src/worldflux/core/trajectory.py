"""`Trajectory`: the output of `WorldModel.rollout`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from worldflux.core.state import State


@dataclass
class Trajectory:
    """An imagined (open-loop or policy-driven) rollout of horizon H.

    - ``states``: the start State and H predicted States stacked on dim 1, tensors (B, H+1, ...).
    - ``actions``: (B, H, A); ``actions[:, t]`` is taken in ``states[:, t]``.
    - ``rewards``: (B, H) reward predicted for that transition, or None if the model has no head.
    - ``continues``: (B, H) probability that the episode continues after it, or None.
    """

    states: State
    actions: Tensor
    rewards: Tensor | None = None
    continues: Tensor | None = None

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[1])

    def state_at(self, t: int) -> State:
        """The State at step t, tensors (B, ...)."""
        return State({k: v[:, t] for k, v in self.states.tensors.items()}, dict(self.states.meta))
