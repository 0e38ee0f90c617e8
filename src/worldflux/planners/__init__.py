"""Sampling-based planners: `CEM` (generic, objective-driven) and `MPPI` (TD-MPC2's planner).

`Planner` is what agents may ask of a planner; `PlanningModel` is what MPPI asks of a model
(`worldflux.planners.base`).
"""

from worldflux.planners.base import Planner, PlanningModel
from worldflux.planners.cem import CEM
from worldflux.planners.mppi import MPPI

__all__ = ["CEM", "MPPI", "Planner", "PlanningModel"]
