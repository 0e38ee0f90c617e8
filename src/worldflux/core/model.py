"""`WorldModel`: the one contract every family implements.

Shapes: B is the batch, T time, A the action dim, H a rollout horizon. Observations follow
`ObsSpec` (a Tensor or a dict of Tensors), actions follow `ActionSpec` (float (B, A), one-hot for
discrete spaces). Every method accepts and returns batch-first tensors on the model's device.

Input checks shared by the families (`check_batch_size`, `check_obs`, `check_action`,
`check_state`) raise `SpecError` / `StateError` naming the argument: a tensor on another device,
a batch size that differs from the State's, a State without the keys the family needs. Float
actions and vector observations are cast to the model's dtype (e.g. float64 -> float32).
"""

from __future__ import annotations

import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor, nn

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError, StateError
from worldflux.core.spec import ActionSpec, Obs, ObsSpec, check_device
from worldflux.core.state import State
from worldflux.core.trajectory import Trajectory

Policy = Callable[[State], Tensor]
Metrics = dict[str, Tensor | float]
_Model = TypeVar("_Model", bound="WorldModel")


class WorldModel(nn.Module, ABC):
    """Base class of world models. Subclasses set `family` and `heads` and implement the methods.

    `heads` names the predictions `decode` can produce (e.g. ``("obs", "reward", "continue")``).
    """

    family: ClassVar[str] = ""
    heads: tuple[str, ...] = ()

    def __init__(self, config: Any, obs_spec: ObsSpec, action_spec: ActionSpec) -> None:
        super().__init__()
        self.config = config
        self.obs_spec = obs_spec
        self.action_spec = action_spec

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters; float actions and vector observations are cast to it."""
        return next(self.parameters()).dtype

    # --- saving (worldflux.core.pretrained) -------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into the directory `path`: everything
        `from_pretrained` needs (config, specs, dtype, weights), no pickle. -> the directory."""
        from worldflux.core.pretrained import save_pretrained

        return save_pretrained(self, path)

    @classmethod
    def from_pretrained(
        cls: type[_Model], path: str | os.PathLike[str], device: torch.device | str | None = None
    ) -> _Model:
        """The model saved by `save_pretrained` in `path`, on `device`, in eval mode; no env or
        preset name needed. Called on a family class (``TDMPC2.from_pretrained``), the saved
        model must be of that family. A missing or damaged file is one `ConfigError` naming it."""
        from worldflux.core.pretrained import load_pretrained

        return cast(_Model, load_pretrained(path, device, cls))

    # --- input checks (shared by the families) -----------------------------------------------

    def check_batch_size(self, batch_size: Any, arg: str = "batch_size") -> int:
        """`batch_size` as an int, or `SpecError` unless it is an integer >= 1."""
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1
        ):
            raise SpecError(f"{arg}: expected an int >= 1, got {batch_size!r}")
        return int(batch_size)

    def check_obs(
        self, obs: Obs, batch: int | None = None, arg: str = "obs", batch_dims: int = 1
    ) -> dict[str, Tensor]:
        """`obs` (the env's form: a Tensor, or a dict for a Dict spec) checked against
        `obs_spec` and the model's device, vector fields cast to its dtype, as the per-field
        view the encoders read {field: (*batch_dims, ...)}; with `batch`, the leading size
        must be it. The models' one observation check, at their public methods."""
        p = next(self.parameters())
        out = self.obs_spec.as_dict(obs, batch_dims, arg, p.device, p.dtype)
        if batch is not None:
            got = next(iter(out.values())).shape[0]
            if got != batch:
                raise SpecError(f"{arg}: expected batch size {batch} (the state's), got {got}")
        return out

    def check_action(
        self, action: Tensor, batch: int | None = None, arg: str = "action", batch_dims: int = 1
    ) -> Tensor:
        """`action` checked against `action_spec` and the model's device, as the model's dtype
        (*batch_dims, A); with `batch`, the leading size must be it."""
        p = next(self.parameters())
        out = self.action_spec.to_model(action, batch_dims, arg, p.device, p.dtype)
        if batch is not None and out.shape[0] != batch:
            raise SpecError(f"{arg}: expected batch size {batch} (the state's), got {out.shape[0]}")
        return out

    def check_state(self, state: State, keys: Sequence[str], arg: str = "state") -> int:
        """Raise `StateError` unless `state` is a State holding `keys` on the model's device.

        -> the State's batch size (leading dim shared by its tensors).
        """
        if not isinstance(state, State):
            raise StateError(f"{arg}: expected a State, got {type(state).__name__}")
        tensors = state.tensors
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise StateError(
                f"{arg}: a {self.family} State needs keys {list(keys)}, missing {missing}; "
                f"got {sorted(tensors)}"
            )
        try:
            check_device(tensors[keys[0]], self.device, f"{arg}[{keys[0]!r}]")
        except SpecError as err:
            raise StateError(str(err)) from None
        return state.batch_size

    # --- the contract -------------------------------------------------------------------------

    @abstractmethod
    def initial_state(self, batch_size: int) -> State:
        """The State before any observation. -> tensors (batch_size, ...)."""

    @abstractmethod
    def encode(self, obs: Obs) -> State:
        """Posterior State for a first observation. obs (B, *obs_shape) -> State (B, ...)."""

    @abstractmethod
    def update(self, state: State, action: Tensor, obs: Obs) -> State:
        """Filter: State after taking `action` (B, A) in `state` and observing `obs` (B, ...)."""

    @abstractmethod
    def transition(self, state: State, action: Tensor) -> State:
        """Predict (imagine) the next State from `state` and `action` (B, A), without obs."""

    @abstractmethod
    def decode(self, state: State, heads: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Predictions from `state`, only for `heads` (default: all of `self.heads`).

        Typical entries: ``obs`` (B, *obs_shape), ``reward`` (B,), ``continue`` (B,) in [0, 1].
        """

    @abstractmethod
    def features(self, state: State) -> Tensor:
        """The flat tensor (B, F) that policies and heads read."""

    @abstractmethod
    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Scalar training loss on `batch` (see `Batch` for the convention) and detached metrics."""

    # --- shared behaviour ---------------------------------------------------------------------

    def rollout(
        self,
        state: State,
        actions: Tensor | None = None,
        policy: Policy | None = None,
        horizon: int | None = None,
    ) -> Trajectory:
        """Imagine H steps from `state` with `actions` (B, H, A) or a `policy` (State -> (B, A)).

        Exactly one of `actions` and `policy` must be given; with a policy, `horizon` is required.
        """
        if (actions is None) == (policy is None):
            raise SpecError("rollout: pass exactly one of actions=(B, H, A) or policy=callable")
        if not isinstance(state, State):
            raise StateError(f"state: expected a State, got {type(state).__name__}")
        if actions is not None:
            actions = self.check_action(actions, state.batch_size, "actions", batch_dims=2)
            if horizon is not None and horizon != actions.shape[1]:
                raise SpecError(
                    f"rollout: horizon={horizon} but actions has {actions.shape[1]} steps"
                )
            horizon = int(actions.shape[1])
        elif isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
            raise SpecError(f"rollout: with a policy, horizon must be an int >= 1, got {horizon!r}")
        states, acts, rewards, conts = [state], [], [], []
        for t in range(int(horizon)):
            if actions is not None:
                a = actions[:, t]
            else:
                assert policy is not None
                a = policy(state)
            nxt, preds = self.imagine_step(state, a)
            states.append(nxt)
            acts.append(a)
            if "reward" in preds:
                rewards.append(preds["reward"])
            if "continue" in preds:
                conts.append(preds["continue"])
            state = nxt
        return Trajectory(
            states=State.stack(states, dim=1),
            actions=torch.stack(acts, 1),
            rewards=torch.stack(rewards, 1) if rewards else None,
            continues=torch.stack(conts, 1) if conts else None,
        )

    def imagine_step(self, state: State, action: Tensor) -> tuple[State, dict[str, Tensor]]:
        """One imagined step: the next State and its ``reward``/``continue`` predictions (B,).

        The default decodes them from the next State; families whose reward depends on the
        action (TD-MPC2) override this.
        """
        nxt = self.transition(state, action)
        wanted = [h for h in ("reward", "continue") if h in self.heads]
        return nxt, (self.decode(nxt, wanted) if wanted else {})

    def check_heads(self, heads: Sequence[str] | None) -> tuple[str, ...]:
        """Validate a `heads` argument against `self.heads`; None means all."""
        if heads is None:
            return self.heads
        unknown = [h for h in heads if h not in self.heads]
        if unknown:
            raise SpecError(
                f"decode: heads {unknown} are not produced by {self.family}; "
                f"available: {list(self.heads)}"
            )
        return tuple(heads)
