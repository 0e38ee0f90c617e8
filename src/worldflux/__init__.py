"""worldflux: world models for reinforcement learning (DreamerV3, TD-MPC2, JEPA) behind one API.

The front door (see docs/api.md):

- ``train(model, env, steps)`` -> a trained agent; ``agent.predict(obs, state)`` acts in the
  env, ``agent.save(dir)`` / ``load_agent(dir)`` store and restore it (no env needed);
- ``load_pretrained(name or dir or Hub id)``: a trained agent shipped with the package
  (``worldflux pretrained`` lists them) or saved with ``agent.save_pretrained``;
- ``make_agent`` and ``Trainer`` for the pieces of ``train``;
- ``create_world_model(name or config, obs_space, action_space)``, ``list_models()``, the
  ``WorldModel`` contract (``save_pretrained`` / ``from_pretrained``) and its ``State``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldflux.agents import make_agent
    from worldflux.agents.io import load_agent
    from worldflux.agents.pretrained import load_pretrained
    from worldflux.api import train
    from worldflux.core.model import WorldModel
    from worldflux.core.registry import create_world_model, list_models
    from worldflux.core.state import State
    from worldflux.training.trainer import Trainer

__all__ = [
    "State",
    "Trainer",
    "WorldModel",
    "create_world_model",
    "list_models",
    "load_agent",
    "load_pretrained",
    "make_agent",
    "train",
]
__version__ = "0.1.0"

# Exports resolved on first use: importing them pulls in torch (seconds), which `worldflux --help`
# and other torch-free entry points should not pay for.
_LAZY = {
    "State": "worldflux.core.state",
    "Trainer": "worldflux.training.trainer",
    "WorldModel": "worldflux.core.model",
    "create_world_model": "worldflux.core.registry",
    "list_models": "worldflux.core.registry",
    "load_agent": "worldflux.agents.io",
    "load_pretrained": "worldflux.agents.pretrained",
    "make_agent": "worldflux.agents",
    "train": "worldflux.api",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'worldflux' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
