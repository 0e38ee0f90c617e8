"""`Batch`: sequences of transitions for `WorldModel.loss`, with ONE transition convention.

Row ``t`` of every field describes arriving at step ``t``:

==============  ===========================================================================
field           meaning at row t (shape)
==============  ===========================================================================
obs             the observation o_t (B, T, *obs_shape), or a dict of those (the env's form)
action          the action a_{t-1} that LED to o_t (B, T, A); zeros where ``is_first``
reward          the reward r_t received on arriving at o_t (B, T); 0 where ``is_first``
is_first        o_t starts an episode (B, T) bool; the model resets its recurrent state there
is_terminal     o_t is a true end of the MDP (B, T) bool: no value beyond it (discount 0)
is_last         o_t is the last stored step of its episode (B, T) bool: terminal OR truncated
==============  ===========================================================================

Truncation (time limits) sets ``is_last`` but never ``is_terminal``: the value beyond a truncated
step still counts. Models must bootstrap through truncation and stop only at ``is_terminal``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import Obs, check_device, map_obs


@dataclass
class Batch:
    """A (B, T) block of transitions; see the module docstring for the convention."""

    obs: Obs
    action: Tensor
    reward: Tensor
    is_first: Tensor
    is_terminal: Tensor
    is_last: Tensor
    # True once the flag values were checked (`validate_flags`, or built by `Replay.gather` from
    # rows `Replay.add` checked): a loss then reads no flag values, which on a GPU is a device sync
    # per update. Changing the flags of a checked batch in place is not detected.
    checked: bool = field(default=False, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T)."""
        return (int(self.reward.shape[0]), int(self.reward.shape[1]))

    def validate(self, device: torch.device | None = None) -> Batch:
        """Raise `SpecError` unless every field is a tensor (obs: or a dict of tensors) of shape
        (B, T, ...) with the right dtype, on `device` when given (`validate_layout`), and the
        flags follow the convention (`validate_flags`). The check for the boundary: where a
        batch enters from outside (a dataset, a user), before any compiled region."""
        return self.validate_layout(device).validate_flags()

    def validate_in_loss(self, device: torch.device | None = None) -> Batch:
        """What a model's ``loss`` checks: the layout always (metadata only, free under
        torch.compile), the flags only in eager mode. Reading flag values needs a device sync and
        breaks a compiled graph; compiled callers validate the batch before the compiled region
        (`validate`), as `Replay.add` already enforces the flags on everything it samples."""
        self.validate_layout(device)
        if not torch.compiler.is_compiling() and not self.checked:
            self.validate_flags()
        return self

    def validate_flags(self) -> Batch:
        """Raise `SpecError` if a terminal step is not also ``is_last`` (reads the values)."""
        if bool((self.is_terminal & ~self.is_last).any()):
            raise SpecError("batch.is_terminal: a terminal step must also be is_last")
        self.checked = True
        return self

    def validate_layout(self, device: torch.device | None = None) -> Batch:
        """Raise `SpecError` unless every field is a tensor (obs: or a dict of tensors) of shape
        (B, T, ...) with the right dtype, on `device` when given. Reads no tensor values."""
        if not isinstance(self.reward, Tensor) or self.reward.dim() != 2:
            got = tuple(self.reward.shape) if isinstance(self.reward, Tensor) else self.reward
            raise SpecError(f"batch.reward: expected shape (B, T), got {got!r:.80}")
        bt = self.shape
        for name in ("is_first", "is_terminal", "is_last"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or tuple(t.shape) != bt or t.dtype != torch.bool:
                found = (tuple(t.shape), t.dtype) if isinstance(t, Tensor) else type(t).__name__
                raise SpecError(f"batch.{name}: expected bool tensor of shape {bt}, got {found}")
        if not isinstance(self.action, Tensor):
            raise SpecError(
                f"batch.action: expected a Tensor of shape {bt} + (A,), "
                f"got {type(self.action).__name__}"
            )
        if self.action.dim() != 3 or tuple(self.action.shape[:2]) != bt:
            raise SpecError(
                f"batch.action: expected shape {bt} + (A,), got {tuple(self.action.shape)}"
            )
        if isinstance(self.obs, Mapping):
            obs = {f"batch.obs[{k!r}]": o for k, o in self.obs.items()}
        elif isinstance(self.obs, Tensor):
            obs = {"batch.obs": self.obs}
        else:
            raise SpecError(
                f"batch.obs: expected a Tensor or a dict of Tensors, got {type(self.obs).__name__}"
            )
        for name, o in obs.items():
            if not isinstance(o, Tensor):
                raise SpecError(f"{name}: expected a Tensor, got {type(o).__name__}")
            if tuple(o.shape[:2]) != bt:
                raise SpecError(f"{name}: expected leading dims {bt}, got {tuple(o.shape)}")
        if device is not None:
            fields_ = {"batch.reward": self.reward, "batch.action": self.action, **obs}
            for name in ("is_first", "is_terminal", "is_last"):
                fields_[f"batch.{name}"] = getattr(self, name)
            for name, t in fields_.items():
                check_device(t, device, name)
        return self

    def to(self, device: torch.device | str) -> Batch:
        """A copy on `device` (non_blocking where the source is pinned)."""

        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=True)

        return Batch(
            obs=map_obs(move, self.obs),
            action=move(self.action),
            reward=move(self.reward),
            is_first=move(self.is_first),
            is_terminal=move(self.is_terminal),
            is_last=move(self.is_last),
            checked=self.checked,
        )
