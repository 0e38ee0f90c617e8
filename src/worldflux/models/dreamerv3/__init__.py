"""DreamerV3 (Hafner et al. 2023, arXiv 2301.04104): world model and imagination actor-critic."""

from worldflux.models.dreamerv3.actor_critic import DreamerV3ActorCritic
from worldflux.models.dreamerv3.config import PRESETS, DreamerV3Config
from worldflux.models.dreamerv3.model import DreamerV3

__all__ = ["PRESETS", "DreamerV3", "DreamerV3ActorCritic", "DreamerV3Config"]
