"""Sampling-based planners: `CEM` (generic, objective-driven) and `MPPI` (TD-MPC2's planner)."""

from worldflux.planners.cem import CEM

__all__ = ["CEM"]
