"""Errors raised by worldflux. Every one names the argument, what was expected and what came."""

from __future__ import annotations


class WorldFluxError(Exception):
    """Base class of every error worldflux raises on purpose."""


class StateError(WorldFluxError, ValueError):
    """A `State` is malformed, or bytes/descriptors claiming to be one are."""


class StateShapeError(StateError):
    """Tensors of a `State` disagree on the batch dimension, or a tensor has none."""


class StateDeviceError(StateError):
    """Tensors of a `State` live on different devices."""


class StateFormatError(StateError):
    """Serialized bytes (or a shared-memory descriptor) are not a valid State payload."""


class ChecksumError(StateFormatError):
    """A payload's integrity checksum does not match its contents."""


class SharedMemoryError(StateError):
    """A shared-memory publish/attach/close call was used incorrectly."""


class SpecError(WorldFluxError, ValueError):
    """An observation or action does not match the model's space (shape, dtype or device)."""


class ConfigError(WorldFluxError, ValueError):
    """A configuration value is out of range or inconsistent."""


class RegistryError(WorldFluxError, KeyError):
    """An unknown model family or preset was requested."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class TrainingError(WorldFluxError, RuntimeError):
    """The run cannot continue (e.g. repeated NaN/Inf losses or gradients)."""
