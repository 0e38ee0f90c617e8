"""The registry: names, did-you-mean errors, overrides, seeds."""

from __future__ import annotations

import pytest

import worldflux
from worldflux.core.exceptions import ConfigError, RegistryError
from worldflux.core.registry import FAMILIES, resolve


def test_unknown_family_suggests() -> None:
    with pytest.raises(RegistryError, match="Did you mean 'dreamerv3'"):
        resolve("dreamer3:debug")


def test_bad_name_type() -> None:
    with pytest.raises(RegistryError, match="family:preset"):
        resolve("")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unknown_preset_and_override(family: str) -> None:
    pytest.importorskip(f"worldflux.models.{family}")
    with pytest.raises(RegistryError, match="unknown preset 'debgu'.*Did you mean 'debug'"):
        resolve(f"{family}:debgu")
    from worldflux.core.registry import make_config

    with pytest.raises(ConfigError, match="unknown config field"):
        make_config(f"{family}:debug", not_a_field=1)
    names = worldflux.list_models()
    assert f"{family}:debug" in names


def test_default_names_are_what_a_bare_family_builds() -> None:
    from worldflux.core.registry import default_names

    names = default_names()
    assert names == {"dreamerv3": "dreamerv3:size12m", "tdmpc2": "tdmpc2:5m", "jepa": "jepa:small"}
    for family, name in names.items():
        assert f"{family}:{resolve(family)[1]}" == name


LR_FIELDS = {"tdmpc2": ["lr"], "dreamerv3": ["wm_lr", "ac_lr", "laprop_lr"], "jepa": ["lr"]}


@pytest.mark.parametrize("family", sorted(LR_FIELDS))
@pytest.mark.parametrize("value", [1e300, 1.5, -1e-3, float("nan"), float("inf"), True, "x"])
def test_learning_rates_outside_0_1_are_rejected(family: str, value: object) -> None:
    from worldflux.core.registry import make_config

    for name in LR_FIELDS[family]:
        with pytest.raises(ConfigError, match=rf"{name}: expected a float in \[0, 1\], got"):
            make_config(f"{family}:debug", **{name: value})


@pytest.mark.parametrize("family", sorted(LR_FIELDS))
def test_learning_rate_zero_is_allowed(family: str) -> None:
    """lr=0 freezes the model: tests use it to show that learning depends on the updates."""
    from worldflux.core.registry import make_config

    for name in LR_FIELDS[family]:
        assert getattr(make_config(f"{family}:debug", **{name: 0.0}), name) == 0.0
