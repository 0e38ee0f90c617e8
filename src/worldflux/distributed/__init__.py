"""Scale-out: multi-process collectors over shared-memory States, and data-parallel training.

- `CollectorPool` / `CollectorConfig` (`collectors`): N processes stepping env copies with a
  policy copy, handing chunks of rows to the learner through shared memory;
  `collector_source.CollectorSource` feeds the `Trainer` from them.
- `data_parallel.DataParallel`: the `Trainer`'s sync strategy over ``torch.distributed``
  (``torchrun``); `gradsync` is the point where every update's gradients are averaged;
  `ddp` holds the process-group helpers.

Nothing here is imported by ``import worldflux``, and importing this package imports none of
its modules until one of the names below is used: single-process training never pays for it.
See docs/distributed.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldflux.distributed.collectors import CollectorConfig, CollectorError, CollectorPool
    from worldflux.distributed.policies import AgentPolicy, MLPPolicy, RandomPolicy
    from worldflux.distributed.transport import Chunk

_LAZY = {
    "AgentPolicy": "worldflux.distributed.policies",
    "Chunk": "worldflux.distributed.transport",
    "CollectorConfig": "worldflux.distributed.collectors",
    "CollectorError": "worldflux.distributed.collectors",
    "CollectorPool": "worldflux.distributed.collectors",
    "MLPPolicy": "worldflux.distributed.policies",
    "RandomPolicy": "worldflux.distributed.policies",
}
__all__ = [
    "AgentPolicy",
    "Chunk",
    "CollectorConfig",
    "CollectorError",
    "CollectorPool",
    "MLPPolicy",
    "RandomPolicy",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'worldflux.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
