"""worldflux: world models for reinforcement learning (DreamerV3, TD-MPC2, JEPA) behind one API."""

from worldflux.core.registry import create_world_model, list_models
from worldflux.core.state import State

__all__ = ["State", "create_world_model", "list_models"]
__version__ = "0.1.0"
