"""worldflux: world models for reinforcement learning (DreamerV3, TD-MPC2, JEPA) behind one API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldflux.core.registry import create_world_model, list_models
    from worldflux.core.state import State

__all__ = ["State", "create_world_model", "list_models"]
__version__ = "0.1.0"

# Exports resolved on first use: importing them pulls in torch (seconds), which `worldflux --help`
# and other torch-free entry points should not pay for.
_LAZY = {
    "State": "worldflux.core.state",
    "create_world_model": "worldflux.core.registry",
    "list_models": "worldflux.core.registry",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'worldflux' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
