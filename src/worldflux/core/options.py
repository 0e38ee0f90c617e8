"""Checking user keyword options (``env.x=...``, ``agent.x=...`` overrides) against a signature.

`check_options(target, options, prefix)` turns what would be a raw ``TypeError`` deep inside a
constructor into a `ConfigError` naming the option: unknown keys list the valid ones, values of
the wrong type say what the annotation expects and what came.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from worldflux.core.exceptions import ConfigError

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    fn = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        return {}


def matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-like `value` fits the annotation `hint` (unknown annotations: True)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(matches(value, h) for h in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool | np.bool_)
    if hint is int:  # numpy integers too; True/False are not ints here
        return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, tuple | list):
            return False
        args = typing.get_args(hint)
        if not args:
            return True
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(matches(v, args[0]) for v in value)
        if len(value) != len(args):
            return False
        return all(matches(v, a) for v, a in zip(value, args, strict=True))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """A short human name of an annotation: ``int``, ``int or None``, ``tuple[int, int]``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def check_options(
    target: Callable[..., Any],
    options: Mapping[str, Any],
    prefix: str = "",
    *,
    skip: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Raise `ConfigError` for keys `target` does not take or values of the wrong type.

    Args:
        target: a function or class (its ``__init__``) the options will be passed to.
        options: the keyword options.
        prefix: how the user spells them (``"agent."``), used in messages.
        skip: parameters the caller sets itself (not user options).
        extra: further accepted keys with their annotations (``Any`` for unchecked).
    """
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    skip = set(skip)
    names = {n for n, p in params.items() if p.kind in _KEYWORD and n not in skip}
    names |= set(extra or {})
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    name = getattr(target, "__qualname__", repr(target))
    reserved = sorted(k for k in options if k in skip)
    if reserved:
        raise ConfigError(
            f"{', '.join(prefix + k for k in reserved)}: set by worldflux itself for {name}, "
            f"not an option here"
        )
    unknown = sorted(set(options) - names) if not open_ended else []
    if unknown:
        valid = ", ".join(prefix + n for n in sorted(names)) or "none"
        raise ConfigError(
            f"{', '.join(prefix + k for k in unknown)}: unknown option for {name}; valid: {valid}"
        )
    hints = {**_hints(target), **(extra or {})}
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not matches(value, hint):
            raise ConfigError(
                f"{prefix}{key}: expected {describe(hint)}, got {value!r} ({type(value).__name__})"
            )
