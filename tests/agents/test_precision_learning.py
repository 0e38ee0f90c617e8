"""The learning smoke tests' bars, met in bf16 (autocast, fp32 master weights) on CPU; the same
seeds and bars as `test_learning_smoke` (see its docstrings for the measured fp32 spread)."""

from __future__ import annotations

import pytest
from test_learning_smoke import RANDOM_RETURN, SEEDS, dreamer_switch_light, tdmpc2_match_light


@pytest.mark.slow
def test_tdmpc2_learns_match_light_in_bf16() -> None:
    returns = [tdmpc2_match_light(seed, precision="bf16") for seed in SEEDS]
    assert sum(r >= 7.0 for r in returns) >= 2, returns


@pytest.mark.slow
def test_dreamer_learns_switch_light_in_bf16() -> None:
    results = [dreamer_switch_light(seed, precision="bf16") for seed in SEEDS]
    assert all(r["before"] < RANDOM_RETURN for r in results), results
    assert sum(r["after"] >= 7.0 for r in results) >= 2, results
