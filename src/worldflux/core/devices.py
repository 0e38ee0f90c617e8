"""Device checks at the model boundary: a tensor on the wrong device is an error naming the
argument, never moved behind the caller's back."""

from __future__ import annotations

import torch
from torch import Tensor

from worldflux.core.exceptions import SpecError


def same_device(got: torch.device, want: torch.device) -> bool:
    """Whether a tensor on `got` lives on `want`; an index-less device (``cuda``) matches any
    index of its type (``cuda:0``). Cheap: one compare in the common case."""
    if got == want:
        return True
    return got.type == want.type and (got.index is None or want.index is None)


def check_device(t: Tensor, device: torch.device | None, name: str) -> None:
    """Raise `SpecError` unless `t` is on `device` (None: no check)."""
    if device is not None and t.device != device and not same_device(t.device, device):
        raise SpecError(
            f"{name}: expected a tensor on the model's device {device}, got one on {t.device}; "
            f"move it with .to({str(device)!r})"
        )
