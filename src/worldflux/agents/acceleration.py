"""How an agent runs its hot functions: compiled or eager, in fp32 or bf16 autocast.

Every agent takes ``compile`` (bool), ``compile_mode`` and ``precision`` and routes its update's
loss functions and its acting through `Acceleration.wrap`:

- ``compile=True``: `torch.compile` with ``compile_mode`` (``"default"``; ``"reduce-overhead"``
  adds CUDA graphs on a GPU). Compiled code reads no flag values: a batch not yet
  checked (`Batch.checked`; replay's batches are) is checked before the compiled region.
  A loss with a long Python loop (DreamerV3: 64 filtering and 15 imagination steps) is compiled
  by regions instead (`compile_region` on the loop's step and the batched parts around it, the
  loss itself `wrap`ped with ``regional=True``): dynamo would unroll the loop into one graph
  of 64 step copies, whose inductor build takes longer than the training run.
- ``precision="bf16"``: the function runs under ``torch.autocast(dtype=torch.bfloat16)``; the
  weights, gradients and optimizer state stay in the parameters' dtype (fp32 master weights).
  Results that leave the agent (actions, acting State) are cast back to the parameters' dtype.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError
from worldflux.core.state import State

PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Acceleration:
    """The ``compile`` / ``compile_mode`` / ``precision`` options of an agent, checked."""

    compile: bool = False  # torch.compile the update's losses and the acting step
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead": CUDA graphs
    precision: str = "fp32"  # "fp32" or "bf16" (autocast, fp32 master weights)

    def __post_init__(self) -> None:
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile: expected true or false, got {self.compile!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"compile_mode: expected one of {list(COMPILE_MODES)}, got {self.compile_mode!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}"
            )

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on `device`'s type, or nothing for fp32."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, fn: F, device: torch.device, *, regional: bool = False) -> F:
        """`fn` under this precision, compiled when ``compile`` is set (compiled lazily, on the
        first call: one compile per input shape and dtype). `regional`: `fn` calls regions
        compiled with `compile_region` itself, so it only gets the precision (the autocast
        context wraps the whole call, the compiled regions run inside it)."""
        if self.precision == "fp32" and (regional or not self.compile):
            return fn

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.autocast(device):
                return fn(*args, **kwargs)

        if regional or not self.compile:
            return run  # type: ignore[return-value]
        return self.compile_region(run)  # type: ignore[return-value]

    def compile_region(self, fn: F, device: torch.device | None = None) -> F:
        """`torch.compile(fn)` with ``compile_mode``: one region of a regionally compiled
        function (see `wrap`), e.g. one step of a loop that Python runs. On a CPU `device` in
        the default mode, inductor's C++ wrapper: one C++ build per graph (with a precompiled
        header) instead of one per kernel, which halves a cold DreamerV3 compile."""
        if device is not None and device.type == "cpu" and self.compile_mode == "default":
            return torch.compile(fn, options={"cpp_wrapper": True})  # type: ignore[return-value]
        return torch.compile(fn, mode=self.compile_mode)  # type: ignore[return-value]


def cast_floats(tree: Any, dtype: torch.dtype) -> Any:
    """`tree` (a Tensor, State, dict, tuple or list) with floating tensors cast to `dtype`:
    what bf16 acting hands back to the env and to the next `act` call."""
    if isinstance(tree, Tensor):
        return tree.to(dtype) if tree.is_floating_point() and tree.dtype != dtype else tree
    if isinstance(tree, State):
        return State({k: cast_floats(v, dtype) for k, v in tree.tensors.items()})
    if isinstance(tree, dict):
        return {k: cast_floats(v, dtype) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return type(tree)(cast_floats(v, dtype) for v in tree)
    return tree


def detached(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as detached tensors on their device (no host sync); the logger reads them."""
    return {k: v.detach() if isinstance(v, Tensor) else v for k, v in metrics.items()}
