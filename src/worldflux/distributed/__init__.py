"""Scale-out: multi-process collectors over shared-memory States, and data-parallel training.

- `CollectorPool` / `CollectorConfig` (`collectors`): N processes stepping env copies with a
  policy copy, handing chunks of rows to the learner through shared memory.
- `ddp`: `torch.distributed` helpers for learners launched by ``torchrun``.

Nothing here is imported by ``import worldflux``; single-process training never pays for it.
See docs/distributed.md.
"""

from worldflux.distributed.collectors import CollectorConfig, CollectorError, CollectorPool
from worldflux.distributed.policies import AgentPolicy, MLPPolicy, RandomPolicy
from worldflux.distributed.transport import Chunk

__all__ = [
    "AgentPolicy",
    "Chunk",
    "CollectorConfig",
    "CollectorError",
    "CollectorPool",
    "MLPPolicy",
    "RandomPolicy",
]
