"""TD-MPC2 (Hansen et al., ICLR 2024): implicit world model, Q ensemble, policy prior."""

from worldflux.models.tdmpc2.config import PRESETS, TDMPC2Config
from worldflux.models.tdmpc2.model import TDMPC2

__all__ = ["PRESETS", "TDMPC2", "TDMPC2Config"]
