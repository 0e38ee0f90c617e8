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
    return with_overrides(family.presets[preset], name, overrides)


def with_overrides(config: Any, label: str, overrides: Mapping[str, Any]) -> Any:
    """`config` with `overrides` replacing fields; an unknown field is a `ConfigError` naming
    `label` with suggestions, a bad value the config's own `ConfigError`."""
    valid = [f.name for f in dataclasses.fields(config)]
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"{label}: unknown config field {key!r}." + _did_you_mean(key, valid))
    return dataclasses.replace(config, **overrides)


def family_of(config: Any) -> tuple[str, Family]:
    """The registered family whose config class `config` is an instance of, and its name."""
    for name, load in FAMILIES.items():
        family = load()
        if type(config) is type(family.presets[family.default]):
            return name, family
    raise RegistryError(
        f"config: expected a 'family:preset' name or a config object of a registered family "
        f"({', '.join(sorted(FAMILIES))}), got {type(config).__name__}"
    )


def create_world_model(
    name: str | Any,
    obs_space: Any,
    action_space: Any,
    device: torch.device | str | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> WorldModel:
    """Build a world model for the given gymnasium spaces (or `ObsSpec`/`ActionSpec`).

    `name` is ``"family:preset"`` or a config object of a registered family (e.g.
    ``dataclasses.replace(TDMPC2Config(), horizon=5)``); the object's type picks the family.
    `seed` makes the initial weights reproducible without touching the global RNG; `overrides`
    replace config fields (unknown names raise `ConfigError` with suggestions).
    """
    if isinstance(name, str):
        family, _ = resolve(name)
        config = make_config(name, **overrides)
    else:
        label, family = family_of(name)
        config = with_overrides(name, label, overrides)
    obs_spec, action_spec = ObsSpec.from_space(obs_space), ActionSpec.from_space(action_space)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = family.model_cls(config, obs_spec, action_spec)
    return model.to(device) if device is not None else model


def config_to_json(config: Any) -> dict[str, Any]:
    """``{"family": name, "fields": {...}}``: a config object as JSON-able data (tuples become
    lists), for files that must rebuild the model without its preset name."""
    family, _ = family_of(config)
    return {"family": family, "fields": dataclasses.asdict(config)}


def config_from_json(data: Any, where: str) -> Any:
    """Inverse of `config_to_json`, validated: a wrong shape, an unknown family or field, or a
    bad value is a `ConfigError` naming `where` (the file it came from)."""
    if not isinstance(data, dict) or set(data) != {"family", "fields"}:
        raise ConfigError(f"{where}: expected {{'family': ..., 'fields': {{...}}}}, got {data!r}")
    name, fields = data["family"], data["fields"]
    if name not in FAMILIES or not isinstance(fields, dict):
        raise ConfigError(
            f"{where}: expected a family in {sorted(FAMILIES)} and a dict of fields, got "
            f"family={name!r}, fields of type {type(fields).__name__}"
        )
    family = FAMILIES[name]()
    template = family.presets[family.default]
    known = {f.name for f in dataclasses.fields(template)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown {name} config fields {unknown}")
    # JSON has no tuples: give tuple fields (e.g. cnn_mults) their type back
    values = {
        k: tuple(v) if isinstance(getattr(template, k), tuple) and isinstance(v, list) else v
        for k, v in fields.items()
    }
    try:
        return type(template)(**values)
    except (ValueError, TypeError) as err:  # ConfigError is a ValueError
        raise ConfigError(f"{where}: invalid {name} config ({err})") from err


def count_parameters(name: str, obs_space: Any, action_space: Any, **overrides: Any) -> int:
    """Parameter count of ``"family:preset"``, built on the meta device (no memory allocated)."""
    family, _ = resolve(name)
    config = make_config(name, **overrides)
    with torch.device("meta"):
        model = family.model_cls(
            config, ObsSpec.from_space(obs_space), ActionSpec.from_space(action_space)
        )
    return sum(p.numel() for p in model.parameters())
