"""The point between backward and clipping where data-parallel training averages gradients.

Every update in worldflux calls `sync_gradients(params)` right after its ``backward`` (the
agents' guarded steps, DreamerV3's world-model and actor-critic steps, TD-MPC2's steps). In a
single process nothing is installed and the call returns False at once. The data-parallel sync
strategy (`worldflux.distributed.data_parallel.DataParallel`) installs its all-reduce with
`gradient_sync` while it trains, so clipping, the NaN/Inf check and the optimizer step all see
the rank-mean gradient. This is the only gradient-sync mechanism in worldflux.

``poisoned`` (a 0-d bool tensor on the device, or a bool) says this rank's loss was not finite:
its backward left non-finite gradients, or none where the NaN did not depend on a parameter. The
synchroniser must leave non-finite gradients on every rank then, so every rank skips the step
together, and decide that on the device (no host read of the flag).

This module imports nothing but torch's types: models and agents import it at no cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor

GradSync = Callable[[Sequence[Tensor], Tensor | bool], None]

_active: list[GradSync] = []


def sync_gradients(params: Iterable[Tensor], poisoned: Tensor | bool = False) -> bool:
    """Hand `params`' gradients to the installed synchroniser; False when none is installed."""
    if not _active:
        return False
    _active[-1](list(params), poisoned)
    return True


@contextmanager
def gradient_sync(fn: GradSync) -> Iterator[None]:
    """Install `fn` as the synchroniser for the duration of the block (blocks nest)."""
    _active.append(fn)
    try:
        yield
    finally:
        _active.remove(fn)


def active() -> bool:
    """True while a synchroniser is installed."""
    return bool(_active)
