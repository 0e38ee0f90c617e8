"""Observation and action specs, built from Gymnasium spaces, with clear errors on bad input.

Conventions the models rely on:
- An observation has ONE form from env to encoder: what the env gives. A Box space gives an
  array (a Tensor once batched for a model), a ``gymnasium.spaces.Dict`` a dict of them; the
  runner, the replay (`add` and `sample`), `Batch`, `Agent.act` and the model methods all take
  and return that form (`map_obs` works on either). `ObsSpec` describes it: `fields` names its
  arrays (a Box's one array is the field `SINGLE_KEY`), `is_dict` says which form it is.
  Only code that stores or encodes fields one by one (the replay's arrays, the encoders via
  `ObsSpec.as_dict`) goes to that per-field view, through `fields_of` / `from_fields`.
  Images are uint8 with 3 dims; models see them as CHW. Vector fields may be any float dtype;
  `ObsSpec.as_dict` casts them to the model's dtype.
- An action given to a model is a float tensor ``(*batch, action_dim)``: one-hot for Discrete
  spaces, values in [-1, 1] for Box spaces. `ActionSpec.to_model` also accepts integer indices
  for Discrete spaces and converts them, and casts float actions to the model's dtype.
- Both checks take the model's ``device``: a tensor elsewhere raises `SpecError` naming the
  argument (nothing is moved to the device behind the caller's back).
- Image layout of a uint8 Box (a, b, c): channels-last (HWC) when the two leading dims agree and
  the last is no larger (``a == b >= c``, e.g. (64, 64, 12) frame stacks), channels-first (CHW)
  when the two trailing dims agree and the first is no larger (``b == c >= a``). Non-square
  images: the dim smaller than both others is the channel dim. Anything else is ambiguous and
  raises; build the spec yourself with ``FieldSpec(shape, torch.uint8, True, channels_last)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from worldflux.core.action_spec import ActionSpec
from worldflux.core.devices import check_device, same_device
from worldflux.core.exceptions import SpecError

__all__ = ["SINGLE_KEY", "ActionSpec", "FieldSpec", "Obs", "ObsSpec", "check_device", "map_obs",
           "obs_batch_size", "same_device"]  # fmt: skip

SINGLE_KEY = "obs"  # the field name of a Box space's one array (per-field views only)
Obs = Tensor | Mapping[str, Tensor]
_Leaf = TypeVar("_Leaf")
_Out = TypeVar("_Out")


def map_obs(fn: Callable[[_Leaf], _Out], obs: _Leaf | Mapping[str, _Leaf]) -> Any:
    """`fn` applied to every array of an observation, keeping its form: an array gives
    ``fn(obs)``, a dict gives ``{key: fn(value)}``. Works for tensors and numpy arrays alike."""
    if isinstance(obs, Mapping):
        return {k: fn(v) for k, v in obs.items()}
    return fn(obs)


def obs_batch_size(obs: Obs) -> int:
    """Leading size of a batched observation (its first field's, for a dict)."""
    first = next(iter(obs.values())) if isinstance(obs, Mapping) else obs
    if not isinstance(first, Tensor) or first.dim() < 1:
        raise SpecError(
            f"obs: expected a batched Tensor (N, ...) or a dict of them, got {first!r:.80}"
        )
    return int(first.shape[0])


@dataclass(frozen=True)
class FieldSpec:
    """One observation field: its per-sample shape as stored, dtype, and whether it is an image."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    is_image: bool = False
    channels_last: bool = False  # stored HWC (models transpose to CHW)

    @property
    def chw(self) -> tuple[int, int, int]:
        """Image shape as the networks see it (C, H, W)."""
        if not self.is_image:
            raise SpecError(f"field of shape {self.shape} is not an image")
        if self.channels_last:
            h, w, c = self.shape
            return (c, h, w)
        c, h, w = self.shape
        return (c, h, w)

    @property
    def size(self) -> int:
        """Number of scalars per sample."""
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ObsSpec:
    """The observation form: its fields (name -> `FieldSpec`) and whether it is a dict of them
    (`is_dict`, a ``Dict`` space) or one array (a Box space, whose field is `SINGLE_KEY`)."""

    fields: dict[str, FieldSpec]
    is_dict: bool = False

    @staticmethod
    def from_space(space: Any) -> ObsSpec:
        """Build from a gymnasium Box or Dict space (or pass an ObsSpec through)."""
        if isinstance(space, ObsSpec):
            return space
        from gymnasium import spaces

        if isinstance(space, spaces.Dict):
            return ObsSpec({k: _field(v, f"obs_space[{k!r}]") for k, v in space.items()}, True)
        return ObsSpec({SINGLE_KEY: _field(space, "obs_space")}, False)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.fields.items() if f.is_image]

    @property
    def vector_keys(self) -> list[str]:
        return [k for k, f in self.fields.items() if not f.is_image]

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON-able data (inverse: `from_json`), stored with saved models."""
        fields = {
            k: {"shape": list(f.shape), "dtype": str(f.dtype).removeprefix("torch."),
                "is_image": f.is_image, "channels_last": f.channels_last}
            for k, f in self.fields.items()
        }  # fmt: skip
        return {"is_dict": self.is_dict, "fields": fields}

    @staticmethod
    def from_json(data: Any, where: str) -> ObsSpec:
        """Inverse of `to_json`; anything malformed is a `SpecError` naming `where`."""
        fields = data.get("fields") if isinstance(data, dict) else None
        is_dict = data.get("is_dict") if isinstance(data, dict) else None
        if not isinstance(fields, dict) or not fields or not isinstance(is_dict, bool):
            raise SpecError(f"{where}: expected {{'is_dict': bool, 'fields': {{..}}}}, got {data}")
        parsed = {str(k): _field_from_json(v, f"{where}[{k!r}]") for k, v in fields.items()}
        return ObsSpec(parsed, is_dict)

    def fields_of(self, obs: Any, arg: str = "obs") -> dict[str, Any]:
        """The per-field view {name: array} of an observation in this spec's form (tensors or
        numpy arrays). Checks the form only (a dict with the spec's keys, or not a dict);
        shapes and dtypes are the caller's to check. Inverse: `from_fields`."""
        if not self.is_dict:
            if isinstance(obs, Mapping):
                raise SpecError(
                    f"{arg}: expected one array (the space is not a Dict), got a dict with keys "
                    f"{sorted(obs)}"
                )
            return {SINGLE_KEY: obs}
        if not isinstance(obs, Mapping):
            raise SpecError(
                f"{arg}: expected a dict with keys {sorted(self.fields)}, got {type(obs).__name__}"
            )
        missing = set(self.fields) - set(obs)
        if missing:
            raise SpecError(f"{arg}: missing keys {sorted(missing)}; got {sorted(obs)}")
        return {k: obs[k] for k in self.fields}

    def from_fields(self, fields: Mapping[str, _Leaf]) -> Any:
        """The observation in this spec's form from its per-field view (inverse of
        `fields_of`): the one array of a Box spec, a dict for a Dict spec."""
        return dict(fields) if self.is_dict else fields[SINGLE_KEY]

    def as_dict(
        self,
        obs: Obs,
        batch_dims: int,
        arg: str = "obs",
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, Tensor]:
        """Check `obs` against the spec and return it as a dict of tensors.

        `batch_dims` is the number of leading dims before the per-sample shape (1 for (B, ...),
        2 for (B, T, ...)). `device` (if given) is where every field must live; float vector
        fields are cast to `dtype` (images stay uint8). Raises `SpecError` naming the argument
        on any mismatch.
        """
        if not self.is_dict and not isinstance(obs, Tensor):
            raise SpecError(f"{arg}: expected a Tensor, got {type(obs).__name__}")
        out = self.fields_of(obs, arg)
        lead: tuple[int, ...] | None = None
        for key, t in out.items():
            name = arg if not self.is_dict else f"{arg}[{key!r}]"
            f = self.fields[key]
            if not isinstance(t, Tensor):
                raise SpecError(f"{name}: expected a Tensor, got {type(t).__name__}")
            if tuple(t.shape[batch_dims:]) != f.shape or t.dim() != batch_dims + len(f.shape):
                raise SpecError(
                    f"{name}: expected per-sample shape {f.shape} after {batch_dims} batch "
                    f"dim(s), got {tuple(t.shape)}"
                )
            if f.is_image and t.dtype != torch.uint8:
                raise SpecError(f"{name}: images must be uint8 (0..255), got {t.dtype}")
            if not f.is_image:
                if not t.is_floating_point():
                    raise SpecError(f"{name}: vector observations must be float, got {t.dtype}")
                if t.dtype != dtype:
                    out[key] = t.to(dtype)
            check_device(t, device, name)
            if lead is None:
                lead = tuple(t.shape[:batch_dims])
            elif tuple(t.shape[:batch_dims]) != lead:
                raise SpecError(
                    f"{name}: batch dims {tuple(t.shape[:batch_dims])} differ from "
                    f"the other fields' {lead}"
                )
        return out


_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float32": torch.float32, "float64": torch.float64}  # fmt: skip


def _field_from_json(data: Any, where: str) -> FieldSpec:
    keys = {"shape", "dtype", "is_image", "channels_last"}
    ok = isinstance(data, dict) and set(data) == keys
    shape: list[Any] = data["shape"] if ok and isinstance(data["shape"], list) else []
    ok = ok and bool(shape) and all(type(n) is int and n > 0 for n in shape)
    ok = ok and data["dtype"] in _DTYPES
    ok = ok and isinstance(data["is_image"], bool) and isinstance(data["channels_last"], bool)
    if not ok or (data["is_image"] and len(shape) != 3):
        raise SpecError(
            f"{where}: expected {{'shape': [positive ints], 'dtype': one of {sorted(_DTYPES)}, "
            f"'is_image': bool, 'channels_last': bool}} (images 3-D), got {data!r}"
        )
    return FieldSpec(tuple(shape), _DTYPES[data["dtype"]], data["is_image"], data["channels_last"])


def _field(space: Any, arg: str) -> FieldSpec:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box):
        raise SpecError(f"{arg}: expected a gymnasium Box (or Dict of Boxes), got {space!r}")
    shape = tuple(int(s) for s in space.shape)
    if space.dtype == "uint8" and len(shape) == 3:
        return FieldSpec(shape, torch.uint8, True, _channels_last(shape, arg))
    if len(shape) != 1:
        raise SpecError(
            f"{arg}: expected a 1-D vector Box or a uint8 HWC/CHW image Box, "
            f"got shape {shape} dtype {space.dtype}"
        )
    return FieldSpec(shape, torch.float32)


def _channels_last(shape: tuple[int, ...], arg: str) -> bool:
    """Layout of a uint8 image Box of shape (a, b, c); see the module docstring."""
    a, b, c = shape
    hwc = a == b >= c if a == b else c < min(a, b)  # square HWC, or c the smallest dim
    chw = b == c >= a if b == c else a < min(b, c)  # square CHW, or a the smallest dim
    if hwc != chw:
        return hwc
    raise SpecError(
        f"{arg}: cannot tell whether the uint8 image Box of shape {shape} is HWC or CHW "
        "(HWC needs H == W >= C or C smaller than H and W; CHW likewise with C first); "
        "pass an ObsSpec built with FieldSpec(shape, torch.uint8, True, channels_last=...) "
        "instead of the gymnasium space"
    )
