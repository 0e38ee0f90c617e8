"""`Agent.predict`: a raw env observation in, an action the env accepts out.

- Observation: what the agent's env returns (numpy, torch or nested lists; a dict of them for
  Dict spaces), one sample with the per-sample shape of `ObsSpec` or a batch with one leading
  dim. Images stay uint8; vector fields are cast to the model's dtype (float64 gymnasium obs
  are fine). For plain Gymnasium ids that is what ``gymnasium.make(id)`` returns too.
- Action: the agent's model-format action (one-hot / [-1, 1]) mapped by the env's own
  `ActionConverter` into the agent's ``native_action_space``: Box actions rescaled to
  [low, high] in the space's shape and dtype, Discrete ones an int (plus the space's start).
  Unbatched in, one action out; batched in, an array with a leading batch dim out.
- Memory: the `State` `act` returns travels through the caller (``state=``), so the agent
  holds no per-episode memory of its own (TD-MPC2's MPPI warm start is the exception: it lives
  in the planner; ``episode_start`` resets it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import ActionSpec, FieldSpec, Obs, ObsSpec, obs_batch_size
from worldflux.core.state import State
from worldflux.envs.base import ActionConverter

if TYPE_CHECKING:
    from worldflux.agents.base import Agent


@torch.no_grad()
def predict(
    agent: Agent, obs: Any, state: State | None, deterministic: bool, episode_start: Any
) -> tuple[Any, State | None]:
    """`Agent.predict` (see its docstring and this module's)."""
    model = agent.model
    model_obs, batched = batch_obs(obs, model.obs_spec, model.device, model.dtype)
    n = obs_batch_size(model_obs)
    is_first = _is_first(episode_start, n, batched, state, model.device)
    modes = [m.training for m in agent.modules().values()]
    agent.train(False)
    try:
        action, state = agent.act(model_obs, state, explore=not deterministic, is_first=is_first)
    finally:
        for m, mode in zip(agent.modules().values(), modes, strict=True):
            m.train(mode)
    space = agent.native_action_space or model_format_space(model.action_spec)
    return to_native(action, ActionConverter(space, "native_action_space"), batched), state


def batch_obs(
    obs: Any, spec: ObsSpec, device: torch.device, dtype: torch.dtype
) -> tuple[Obs, bool]:
    """`obs` in the model's observation form (a (N, ...) Tensor, or a dict of them for Dict
    specs) on `device`, and whether it came batched. Raises `SpecError` naming the field."""
    fields, flags = {}, set()
    for key, x in spec.fields_of(obs).items():
        name = f"obs[{key!r}]" if spec.is_dict else "obs"
        fields[key], batched = _field_tensor(x, spec.fields[key], name, device, dtype)
        flags.add(batched)
    if len(flags) > 1:
        raise SpecError("obs: some fields are batched and some are not; batch all or none")
    return spec.from_fields(fields), flags.pop()


def _field_tensor(
    x: Any, field: FieldSpec, name: str, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, bool]:
    """One field as (N, *shape) on `device` and whether it had a batch dim."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if field.is_image and t.dtype != torch.uint8:
        raise SpecError(f"{name}: images must be uint8 (0..255), got {t.dtype}")
    per = len(field.shape)
    if t.dim() not in (per, per + 1) or tuple(t.shape[t.dim() - per :]) != field.shape:
        raise SpecError(
            f"{name}: expected shape {field.shape} or (N, *{field.shape}), got {tuple(t.shape)}"
        )
    t = t.to(device=device, dtype=torch.uint8 if field.is_image else dtype)
    batched = t.dim() == per + 1
    return (t if batched else t.unsqueeze(0)), batched  # (*shape) -> (1, *shape)


def _is_first(
    episode_start: Any, n: int, batched: bool, state: State | None, device: torch.device
) -> Tensor | None:
    """`act`'s ``is_first`` (N,): from `episode_start` (a bool, or (N,) bools when batched);
    by default False for every row of a continuing `state` and None without one."""
    if episode_start is None:
        return None if state is None else torch.zeros(n, dtype=torch.bool, device=device)
    flags = torch.as_tensor(np.asarray(episode_start, dtype=bool), device=device).reshape(-1)
    if flags.numel() == 1:
        return flags.expand(n).clone()
    if not batched or flags.numel() != n:
        raise SpecError(f"episode_start: expected a bool or {n} bools, got {flags.numel()}")
    return flags


def model_format_space(spec: ActionSpec) -> spaces.Space:
    """The action space when the env's own one is unknown: Discrete(n), MultiDiscrete(groups),
    MultiBinary(A), or Box(-1, 1, (A,))."""
    if spec.multi_discrete:
        return spaces.MultiDiscrete(list(spec.groups))
    if spec.discrete:
        return spaces.Discrete(spec.dim)
    if spec.binary:
        return spaces.MultiBinary(spec.dim)
    return spaces.Box(-1.0, 1.0, (spec.dim,), np.float32)


def to_native(action: Tensor, converter: ActionConverter, batched: bool) -> Any:
    """Model-format actions (N, A) as env actions: (N, *shape) array / (N,) ints when
    `batched`, else the single action (an array, or an int for Discrete spaces)."""
    rows = [converter(a)[0] for a in action.detach().cpu().numpy()]  # (A,) -> env action
    if not batched:
        return rows[0]
    return np.asarray(rows, dtype=np.int64) if converter.discrete else np.stack(rows)


# --- the native action space as JSON (stored with saved agents) --------------------------------

_BOX_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A Discrete, MultiDiscrete, MultiBinary or Box action space as JSON-able data (inverse:
    `space_from_json`)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        nvec, start = np.asarray(space.nvec), np.asarray(space.start)
        return {"type": "multi_discrete", "nvec": nvec.tolist(), "start": start.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "multi_binary", "shape": [int(s) for s in space.shape]}
    if isinstance(space, spaces.Box) and str(space.dtype) in _BOX_DTYPES:
        return {
            "type": "box",
            "shape": [int(s) for s in space.shape],
            "dtype": str(space.dtype),
            "low": np.asarray(space.low, np.float64).reshape(-1).tolist(),
            "high": np.asarray(space.high, np.float64).reshape(-1).tolist(),
        }
    raise SpecError(
        "native_action_space: expected a Discrete, MultiDiscrete, MultiBinary or numeric Box, "
        f"got {space!r}"
    )


def space_from_json(data: Any, where: str) -> spaces.Space:
    """Inverse of `space_to_json`; anything malformed is a `SpecError` naming `where`."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "discrete" and set(data) == {"type", "n", "start"}:
        n, start = data["n"], data["start"]
        if type(n) is int and n >= 1 and type(start) is int:
            return spaces.Discrete(n, start=start)
    if kind in ("multi_discrete", "multi_binary"):
        multi = _multi_from_json(data)
        if multi is not None:
            return multi
    if kind == "box" and set(data) == {"type", "shape", "dtype", "low", "high"}:
        shape, low, high = data["shape"], data["low"], data["high"]
        size = int(np.prod(shape)) if isinstance(shape, list) else -1
        ok = isinstance(shape, list) and all(type(s) is int and s >= 1 for s in shape)
        ok = ok and data["dtype"] in _BOX_DTYPES and _bounds(low, size) and _bounds(high, size)
        if ok and all(lo <= hi for lo, hi in zip(low, high, strict=True)):
            dtype = np.dtype(data["dtype"])
            lo, hi = (np.asarray(b, np.float64).astype(dtype).reshape(shape) for b in (low, high))
            return spaces.Box(lo, hi, tuple(shape), dtype)
    raise SpecError(
        f"{where}: expected {{'type': 'discrete', 'n', 'start'}}, {{'type': 'multi_discrete', "
        f"'nvec', 'start'}}, {{'type': 'multi_binary', 'shape'}} or {{'type': 'box', 'shape', "
        f"'dtype', 'low', 'high'}} with finite bounds, got {data!r}"
    )


def _bounds(values: Any, size: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == size
        and all(type(v) in (int, float) and np.isfinite(v) for v in values)
    )


def _multi_from_json(data: dict[str, Any]) -> spaces.Space | None:
    """A MultiDiscrete / MultiBinary space from `space_to_json`'s data, or None if malformed."""

    def ints(x: Any, low: int) -> bool:
        flat = np.asarray(x, dtype=object).reshape(-1) if isinstance(x, list) else None
        return flat is not None and flat.size > 0 and all(type(v) is int and v >= low for v in flat)

    if data["type"] == "multi_binary" and set(data) == {"type", "shape"}:
        return spaces.MultiBinary(data["shape"]) if ints(data["shape"], 1) else None
    if set(data) != {"type", "nvec", "start"} or not ints(data["nvec"], 1):
        return None
    if not ints(data["start"], -(2**62)) or np.shape(data["start"]) != np.shape(data["nvec"]):
        return None
    return spaces.MultiDiscrete(np.asarray(data["nvec"]), start=np.asarray(data["start"]))
