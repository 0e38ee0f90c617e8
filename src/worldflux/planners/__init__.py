"""Sampling-based planners: `CEM` (generic, objective-driven) and `MPPI` (TD-MPC2's planner)."""

from worldflux.planners.cem import CEM
from worldflux.planners.mppi import MPPI

__all__ = ["CEM", "MPPI"]
