"""The model registry: ``"family:preset"`` names mapped to a model class and a config instance.

The registry is an explicit dict. Each family is imported only when first asked for, so importing
worldflux stays cheap.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from worldflux.core.exceptions import ConfigError, RegistryError
from worldflux.core.model import WorldModel
from worldflux.core.spec import ActionSpec, ObsSpec


@dataclass(frozen=True)
class Family:
    """A model family: its class, its named presets (config instances) and the default preset."""

    model_cls: type[WorldModel]
    presets: Mapping[str, Any]
    default: str


def _dreamerv3() -> Family:
    from worldflux.models.dreamerv3 import PRESETS, DreamerV3

    return Family(DreamerV3, PRESETS, "size12m")


def _tdmpc2() -> Family:
    from worldflux.models.tdmpc2 import PRESETS, TDMPC2

    return Family(TDMPC2, PRESETS, "5m")


def _jepa() -> Family:
    from worldflux.models.jepa import JEPA, PRESETS

    return Family(JEPA, PRESETS, "small")


FAMILIES: dict[str, Callable[[], Family]] = {
    "dreamerv3": _dreamerv3,
    "tdmpc2": _tdmpc2,
    "jepa": _jepa,
}


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Available: {', '.join(options)}."


def resolve(name: str) -> tuple[Family, str]:
    """Split ``"family:preset"`` (preset optional) and look both up."""
    if not isinstance(name, str) or not name:
        raise RegistryError(f"name: expected 'family:preset', got {name!r}")
    family_name, _, preset = name.partition(":")
    if family_name not in FAMILIES:
        raise RegistryError(
            f"unknown model family {family_name!r}." + _did_you_mean(family_name, sorted(FAMILIES))
        )
    family = FAMILIES[family_name]()
    preset = preset or family.default
    if preset not in family.presets:
        raise RegistryError(
            f"unknown preset {preset!r} for {family_name}."
            + _did_you_mean(preset, list(family.presets))
        )
    return family, preset


def list_models() -> list[str]:
    """Every registered ``"family:preset"`` name."""
    return [f"{name}:{p}" for name, load in FAMILIES.items() for p in load().presets]


def default_names() -> dict[str, str]:
    """family -> the ``"family:preset"`` a bare family name (``"tdmpc2"``) builds."""
    return {name: f"{name}:{load().default}" for name, load in FAMILIES.items()}


def make_config(name: str, **overrides: Any) -> Any:
    """The preset's config with `overrides` applied (validated by the config's __post_init__)."""
    family, preset = resolve(name)
    config = family.presets[preset]
    valid = [f.name for f in dataclasses.fields(config)]
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"{name}: unknown config field {key!r}." + _did_you_mean(key, valid))
    return dataclasses.replace(config, **overrides)


def create_world_model(
    name: str,
    obs_space: Any,
    action_space: Any,
    device: torch.device | str | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> WorldModel:
    """Build ``"family:preset"`` for the given gymnasium spaces (or `ObsSpec`/`ActionSpec`).

    `seed` makes the initial weights reproducible without touching the global RNG; `overrides`
    replace config fields (unknown names raise `ConfigError` with suggestions).
    """
    family, _ = resolve(name)
    config = make_config(name, **overrides)
    obs_spec, action_spec = ObsSpec.from_space(obs_space), ActionSpec.from_space(action_space)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = family.model_cls(config, obs_spec, action_spec)
    return model.to(device) if device is not None else model


def count_parameters(name: str, obs_space: Any, action_space: Any, **overrides: Any) -> int:
    """Parameter count of ``"family:preset"``, built on the meta device (no memory allocated)."""
    family, _ = resolve(name)
    config = make_config(name, **overrides)
    with torch.device("meta"):
        model = family.model_cls(
            config, ObsSpec.from_space(obs_space), ActionSpec.from_space(action_space)
        )
    return sum(p.numel() for p in model.parameters())
