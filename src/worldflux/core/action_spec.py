"""`ActionSpec`: an action space as a model sees it (see `worldflux.core.spec` for the
conventions), built from Gymnasium spaces, with clear errors on bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from worldflux.core.devices import check_device
from worldflux.core.exceptions import SpecError


@dataclass(frozen=True)
class ActionSpec:
    """Action space as a model sees it: `dim` floats.

    - Discrete(n): one-hot of n choices (``discrete``, ``groups == (n,)``).
    - MultiDiscrete(nvec): the one-hots of its sub-actions, concatenated (``discrete``,
      ``groups == nvec``, ``dim == sum(nvec)``); a valid action has exactly one 1 per group.
    - MultiBinary(n): n bits, +1 for a set bit and -1 for a clear one (``binary``; not
      ``discrete``: a model without a Bernoulli policy may treat the bits as continuous values
      in [-1, 1], and the env sets a bit where the value is > 0).
    - 1-D Box: values in [-1, 1].
    """

    dim: int
    discrete: bool
    groups: tuple[int, ...] = ()  # one-hot sizes of the sub-actions (discrete only)
    binary: bool = False  # MultiBinary bits (+1 / -1)

    def __post_init__(self) -> None:
        groups = tuple(int(g) for g in self.groups) or ((self.dim,) if self.discrete else ())
        object.__setattr__(self, "groups", groups)
        ok = not groups or (self.discrete and min(groups) >= 1 and sum(groups) == self.dim)
        if not ok or (self.binary and self.discrete) or self.dim < 1:
            raise SpecError(
                f"ActionSpec: expected dim >= 1, groups (discrete only) summing to dim, and "
                f"binary only when not discrete; got dim={self.dim}, discrete={self.discrete}, "
                f"groups={groups}, binary={self.binary}"
            )

    @property
    def multi_discrete(self) -> bool:
        """Discrete with more than one sub-action (a MultiDiscrete space)."""
        return len(self.groups) > 1

    @staticmethod
    def from_space(space: Any) -> ActionSpec:
        """Build from a gymnasium Discrete, MultiDiscrete, MultiBinary or 1-D Box (or pass an
        ActionSpec through)."""
        if isinstance(space, ActionSpec):
            return space
        import numpy as np
        from gymnasium import spaces

        if isinstance(space, spaces.Discrete):
            return ActionSpec(int(space.n), True)
        if isinstance(space, spaces.MultiDiscrete):
            nvec = tuple(int(n) for n in np.asarray(space.nvec).reshape(-1))
            return ActionSpec(sum(nvec), True, nvec)
        if isinstance(space, spaces.MultiBinary):
            return ActionSpec(int(np.prod(space.shape)), False, binary=True)
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            return ActionSpec(int(space.shape[0]), False)
        raise SpecError(
            f"action_space: expected Discrete, MultiDiscrete, MultiBinary or a 1-D Box, "
            f"got {space!r}"
        )

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON-able data (inverse: `from_json`); the keys ``groups`` and
        ``binary`` only where they say more than ``discrete`` (older files lack them)."""
        out: dict[str, Any] = {"dim": self.dim, "discrete": self.discrete}
        if self.multi_discrete:
            out["groups"] = list(self.groups)
        if self.binary:
            out["binary"] = True
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> ActionSpec:
        """Inverse of `to_json`; anything malformed is a `SpecError` naming `where`."""
        keys = set(data) if isinstance(data, dict) else set()
        ok = {"dim", "discrete"} <= keys <= {"dim", "discrete", "groups", "binary"}
        ok = ok and type(data["dim"]) is int and data["dim"] >= 1
        ok = ok and isinstance(data["discrete"], bool)
        groups: Any = data.get("groups", []) if ok else None
        ok = ok and isinstance(groups, list) and all(type(g) is int for g in groups)
        if ok and isinstance(data.get("binary", False), bool):
            try:
                return ActionSpec(data["dim"], data["discrete"], tuple(groups),
                                  data.get("binary", False))  # fmt: skip
            except SpecError:
                pass
        raise SpecError(
            f"{where}: expected {{'dim': int >= 1, 'discrete': bool}} (optionally 'groups': "
            f"[ints] summing to dim, 'binary': bool), got {data}"
        )

    def to_model(
        self,
        action: Tensor,
        batch_dims: int,
        arg: str = "action",
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Check `action`; return `dtype` `(*batch, dim)`.

        Integer actions are converted: Discrete indices (*batch) and MultiDiscrete indices
        (*batch, groups) become one-hots, MultiBinary 0/1 bits (*batch, dim) become -1/+1.
        `device` (if given) is where `action` must live; float actions are cast to `dtype`.
        """
        if not isinstance(action, Tensor):
            raise SpecError(f"{arg}: expected a Tensor, got {type(action).__name__}")
        check_device(action, device, arg)
        if (self.discrete or self.binary) and not action.is_floating_point():
            return self._from_integers(action, batch_dims, arg).to(dtype)
        if not action.is_floating_point():
            raise SpecError(f"{arg}: continuous actions must be floating point, got {action.dtype}")
        if action.dim() != batch_dims + 1 or action.shape[-1] != self.dim:
            raise SpecError(
                f"{arg}: expected shape (<{batch_dims} batch dims>, {self.dim}), "
                f"got {tuple(action.shape)}"
            )
        return action if action.dtype == dtype else action.to(dtype)

    def _from_integers(self, action: Tensor, batch_dims: int, arg: str) -> Tensor:
        """Integer indices / bits -> one-hots / +-1 (see `to_model`)."""
        per_sample = (self.dim,) if self.binary else (len(self.groups),) * self.multi_discrete
        if tuple(action.shape[batch_dims:]) != per_sample or action.dim() < batch_dims:
            shape = "".join(f", {n}" for n in per_sample)
            raise SpecError(
                f"{arg}: integer actions must have shape (<{batch_dims} batch dims>{shape}), "
                f"got {tuple(action.shape)}"
            )
        x = action.reshape(*action.shape[:batch_dims], -1)  # (*batch, bits or groups)
        high = torch.tensor([2] * self.dim if self.binary else self.groups, device=x.device)
        bad = ((x < 0) | (x >= high)).reshape(-1, high.numel()).any(0)  # (bits or groups,)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            what = "bits must be 0 or 1" if self.binary else "indices must lie in"
            raise SpecError(
                f"{arg}: {what} [0, {int(high[i])}) (entry {i}), got "
                f"[{int(x[..., i].min())}, {int(x[..., i].max())}]"
            )
        if self.binary:
            return x * 2 - 1
        return torch.cat([F.one_hot(x[..., i].long(), n) for i, n in enumerate(self.groups)], -1)
