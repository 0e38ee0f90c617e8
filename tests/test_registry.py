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
