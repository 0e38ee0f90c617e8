"""JEPA world model: latent prediction with SIGReg / EMA anti-collapse, and goal planning."""

from worldflux.models.jepa.config import PRESETS, JEPAConfig
from worldflux.models.jepa.model import JEPA

__all__ = ["JEPA", "PRESETS", "JEPAConfig"]
