"""A stop signal during a run's evaluation: the evaluation is abandoned at its next env step and
the resumed run redoes it from the same RNG and agent state, so the resume stays exact.

Without this a Ctrl-C or SIGTERM waited for the whole evaluation (TD-MPC2's 10 DMC episodes of
MPPI: about 20 minutes on a CPU core), longer than a scheduler's grace period before SIGKILL.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from worldflux.agents.base import Agent
from worldflux.training.checkpoint import capture_rng, restore_rng
from worldflux.training.evaluate import EvalStoppedError
from worldflux.training.signals import DeferredStop


def evaluate_or_defer(
    run_eval: Callable[..., dict[str, Any]], agent: Agent, stop: DeferredStop | None
) -> dict[str, Any] | None:
    """``run_eval(stop=...)`` asking whether `stop` was requested, or None when it was during
    the evaluation. Then the global RNGs and the agent's extra state (e.g. a planner's warm
    start) are put back as they were before it, so a checkpoint written now resumes into the
    same evaluation. Without `stop`, just ``run_eval()``."""
    if stop is None:
        return run_eval()
    rng = capture_rng()
    extra = copy.deepcopy(agent.extra_state())
    try:
        return run_eval(stop=lambda: stop.requested is not None)
    except EvalStoppedError:
        restore_rng(rng)
        agent.load_extra_state(extra)
        return None
