"""Preset listing for ``worldflux models``: parameter counts on reference spaces (meta device)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from worldflux.core.exceptions import WorldFluxError
from worldflux.core.registry import FAMILIES, count_parameters

# Counts depend on the spaces; these are stated next to each number.
REFERENCE_SPACES = [
    (
        "vector obs (17,), 6-d Box action",
        spaces.Box(-np.inf, np.inf, (17,), np.float32),
        spaces.Box(-1.0, 1.0, (6,), np.float32),
    ),
    (
        "64x64x3 image obs, 2-d Box action",
        spaces.Box(0, 255, (64, 64, 3), np.uint8),
        spaces.Box(-1.0, 1.0, (2,), np.float32),
    ),
]


def preset_table() -> list[tuple[str, int | None, str]]:
    """(``family:preset``, parameter count or None, the reference space it was counted on)."""
    rows: list[tuple[str, int | None, str]] = []
    for family, load in FAMILIES.items():
        try:
            presets = list(load().presets)
        except ImportError as err:
            rows.append((f"{family}:*", None, f"not importable: {err}"))
            continue
        for preset in presets:
            rows.append(_count(f"{family}:{preset}"))
    return rows


def _count(name: str) -> tuple[str, int | None, str]:
    last = ""
    for label, obs, act in REFERENCE_SPACES:
        try:
            return name, count_parameters(name, obs, act), label
        except (WorldFluxError, RuntimeError, NotImplementedError) as err:
            last = str(err)
    return name, None, f"could not count: {last}"
