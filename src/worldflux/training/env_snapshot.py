"""Env snapshots for exact resume: what a checkpoint stores of each env, and whether it can.

An env resumes exactly when its state can be captured faithfully:

- it has ``get_state()`` / ``set_state(state)`` (our DMC and Atari adapters, or your own env:
  state made of numbers, strings, lists, dicts and numpy arrays), or
- its state is plain Python attributes: Gymnasium's classic-control and toy-text tasks and
  worldflux's own envs, under any stack of wrappers whose counters are plain attributes too
  (TimeLimit).

Any other env (MuJoCo-based Gymnasium tasks, Crafter, highway-env, a custom env without the
pair) keeps state in native objects that an attribute copy would miss, which would resume a
*different* episode silently. Its snapshot says so instead, and a resumed run starts a fresh
(seeded) episode in it and says so on stderr.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worldflux.core.exceptions import SpecError

_SIMPLE = (bool, int, float, str, type(None), np.ndarray, np.generic)
# innermost env classes whose whole state is plain attributes
_ATTRIBUTE_STATE_MODULES = (
    "gymnasium.envs.classic_control.",
    "gymnasium.envs.toy_text.",
    "worldflux.",
)


def _layers(env: Any) -> list[Any]:
    out = [env]
    while hasattr(out[-1], "env"):
        out.append(out[-1].env)
    return out


def _has_custom_state(layer: Any) -> bool:
    return hasattr(layer, "get_state") and hasattr(layer, "set_state")


def _captured_layers(env: Any) -> tuple[list[Any], Any | None]:
    """The layers whose plain attributes a snapshot copies (wrappers above the first layer with
    its own state pair, or all of them), and that layer (or None)."""
    layers = _layers(env)
    for depth, layer in enumerate(layers):
        if _has_custom_state(layer):
            return layers[:depth], layer
    return layers, None


def restorable(env: Any) -> bool:
    """Whether `capture_env` can snapshot `env` exactly."""
    layers, custom = _captured_layers(env)
    return custom is not None or type(layers[-1]).__module__.startswith(_ATTRIBUTE_STATE_MODULES)


def describe(env: Any) -> str:
    inner = _layers(env)[-1]
    spec = getattr(inner, "spec", None)
    return getattr(spec, "id", None) or type(inner).__qualname__


def _attributes(layer: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: v for k, v in vars(layer).items() if isinstance(v, _SIMPLE)}
    rng = getattr(layer, "_np_random", None)
    if isinstance(rng, np.random.Generator):
        attrs["__np_random__"] = rng.bit_generator.state
    return attrs


def capture_env(env: Any) -> dict[str, Any]:
    """Snapshot of an env: the plain attributes (numbers, arrays, None, the ``np_random``
    generator state) of each wrapper layer down to the first layer with its own
    ``get_state()``, and that state; ``{"restart": <env name>}`` when no layer has one and the
    innermost env's state is not plain attributes (see the module doc)."""
    if not restorable(env):
        return {"restart": describe(env)}
    layers, custom = _captured_layers(env)
    snap: dict[str, Any] = {"layers": [_attributes(layer) for layer in layers]}
    if custom is not None:
        snap["custom"] = custom.get_state()
    return snap


def restore_env(env: Any, snap: dict[str, Any]) -> bool:
    """Inverse of `capture_env` on an env built the same way. Returns False when the snapshot
    holds no state (the caller starts a fresh episode and says so)."""
    if "restart" in snap:
        return False
    layers, custom = _captured_layers(env)
    saved = snap.get("layers", [])  # snapshots of custom-state envs before wrappers were copied
    if len(layers) != len(saved) and not (custom is not None and not saved):
        raise SpecError(
            f"env state: snapshot has {len(saved)} wrapper layers, env has {len(layers)}"
        )
    if ("custom" in snap) != (custom is not None):
        raise SpecError("env state: the snapshot and the env disagree on get_state()/set_state()")
    if custom is not None:
        custom.set_state(snap["custom"])
    for layer, attrs in zip(layers, saved, strict=False):
        for key, value in attrs.items():
            if key == "__np_random__":
                rng = np.random.Generator(getattr(np.random, value["bit_generator"])())
                rng.bit_generator.state = value
                layer._np_random = rng
            else:
                setattr(layer, key, value)
    return True
