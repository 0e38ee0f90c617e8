"""What agents may ask of a planner (`Planner`) and what MPPI asks of a model (`PlanningModel`).

A planner is stateful between calls: it keeps a warm start (the previous plan, shifted one step)
per environment. Agents talk to it only through `Planner`:

- ``plan(model, state, *, explore) -> action (B, A)``: plan from `state` (B envs), return the
  first action; ``explore=False`` is the deterministic evaluation choice;
- ``reset(mask=None)``: forget the warm start of every env, or of those where `mask` (B,) bool
  is True (episode ends). A mask of another length than the warm start's is a `SpecError`;
- ``batch_size``: the number of envs the warm start is for (None when there is none), so an
  agent acting in another batch of envs (an evaluation) can start cold;
- ``state_dict()`` / ``load_state_dict(state)``: the warm start and whatever else the next plan
  depends on (tensors, bools, None), for exact resume. Tensors may come back on another device.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from worldflux.core.spec import ActionSpec
from worldflux.core.state import State

ModelT_contra = TypeVar("ModelT_contra", contravariant=True)


@runtime_checkable
class Planner(Protocol[ModelT_contra]):
    """A receding-horizon planner batched over envs (see the module docstring)."""

    @property
    def batch_size(self) -> int | None:
        """Envs the warm start is for; None when cold."""
        ...

    def plan(self, model: ModelT_contra, state: State, *, explore: bool) -> Tensor:
        """First action (B, A) of the plan from `state` (B envs)."""
        ...

    def reset(self, mask: Tensor | None = None) -> None:
        """Forget the warm start of all envs, or of those where `mask` (B,) bool is True."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The planner's state between plans."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        ...


@runtime_checkable
class PlanningModel(Protocol):
    """What `worldflux.planners.MPPI` needs from a world model (TD-MPC2 provides it).

    Every method takes and returns batch-first tensors on the model's device.
    """

    action_spec: ActionSpec  # dim A; discrete actions are one-hot
    discount: float  # per-step discount of the imagined return (unless MPPI(discount=...))

    def imagine_step(self, state: State, action: Tensor) -> tuple[State, dict[str, Tensor]]:
        """Next State and ``reward`` (B,) of taking `action` (B, A) in `state`; an optional
        ``continue`` (B,) < 0.5 ends the imagined return there."""
        ...

    def transition(self, state: State, action: Tensor) -> State:
        """Next State after `action` (B, A)."""
        ...

    def policy(self, state: State, sample: bool = True) -> Tensor:
        """Policy-prior action (B, A): a sample, or the deterministic one."""
        ...

    def value(self, state: State, action: Tensor) -> Tensor:
        """Bootstrap value (B,) of taking `action` (B, A) in `state` at the horizon."""
        ...


def describe_state(state: Any) -> str:
    """A planner state's keys and value types, for error messages (never the tensors)."""
    if not isinstance(state, dict):
        return type(state).__name__
    return "{" + ", ".join(f"{k!r}: {type(v).__name__}" for k, v in state.items()) + "}"
