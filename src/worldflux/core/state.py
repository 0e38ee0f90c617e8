"""`State`: the tensor container every world model speaks. Contract: ../../shared/spec/state.md."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from worldflux.core.exceptions import StateDeviceError, StateError, StateShapeError


@dataclass
class State:
    """Model-specific latent tensors (batch-first) plus JSON-able metadata."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Tensor | None = None) -> Tensor | None:
        """The tensor under `key`, or `default` when absent."""
        return self.tensors.get(key, default)

    @property
    def batch_size(self) -> int:
        """Size of the leading dimension shared by every tensor."""
        if not self.tensors:
            raise StateError("State.batch_size: the State holds no tensors")
        key, t = next(iter(self.tensors.items()))
        if t.dim() == 0:
            raise StateShapeError(f"State.batch_size: tensor {key!r} is 0-d and has no batch dim")
        return int(t.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the tensors (all must share one)."""
        if not self.tensors:
            raise StateError("State.device: the State holds no tensors")
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str) -> State:
        """A new State on `device`; meta is copied (shallow)."""
        dev = torch.device(device)
        return State({k: v.to(dev) for k, v in self.tensors.items()}, dict(self.meta))

    def detach(self) -> State:
        """A new State cut from the autograd graph; meta is copied (shallow)."""
        return State({k: v.detach() for k, v in self.tensors.items()}, dict(self.meta))

    def clone(self) -> State:
        """A deep copy: independent tensors and a deep-copied meta."""
        return State({k: v.clone() for k, v in self.tensors.items()}, copy.deepcopy(self.meta))

    def validate(self) -> State:
        """Raise `StateError` unless keys are str, tensors share batch size and device."""
        if not self.tensors:
            raise StateError("State.validate: the State holds no tensors")
        batch: int | None = None
        device: torch.device | None = None
        for key, t in self.tensors.items():
            if not isinstance(key, str):
                raise StateError(f"State.validate: keys must be str, got {type(key).__name__}")
            if not isinstance(t, Tensor):
                raise StateError(f"State.validate: {key!r} is not a Tensor but {type(t).__name__}")
            if t.dim() == 0:
                raise StateShapeError(f"State.validate: tensor {key!r} is 0-d (no batch dim)")
            if batch is None:
                batch, device = int(t.shape[0]), t.device
            elif t.shape[0] != batch:
                raise StateShapeError(
                    f"State.validate: tensor {key!r} has batch {t.shape[0]}, expected {batch}"
                )
            elif t.device != device:
                raise StateDeviceError(
                    f"State.validate: tensor {key!r} is on {t.device}, expected {device}"
                )
        return self

    def __getitem__(self, index: Any) -> State:
        """Index every tensor along the batch dimension: `state[2:5]`, `state[mask]`."""
        return State({k: v[index] for k, v in self.tensors.items()}, dict(self.meta))

    @staticmethod
    def stack(states: list[State], dim: int = 0) -> State:
        """Stack States key by key along a new dimension `dim`."""
        if not states:
            raise StateError("State.stack: expected a non-empty list of States")
        keys = list(states[0].tensors)
        return State(
            {k: torch.stack([s.tensors[k] for s in states], dim) for k in keys},
            dict(states[0].meta),
        )

    @staticmethod
    def cat(states: list[State], dim: int = 0) -> State:
        """Concatenate States key by key along `dim`."""
        if not states:
            raise StateError("State.cat: expected a non-empty list of States")
        keys = list(states[0].tensors)
        return State(
            {k: torch.cat([s.tensors[k] for s in states], dim) for k in keys},
            dict(states[0].meta),
        )
