"""`State`: the tensor container every world model speaks. Contract: ../../shared/spec/state.md.

Bytes and shared memory: `worldflux.core.serialization` (`codec`: format v1,
safetensors-compatible; `shm`: one POSIX segment per State). User guide: docs/state.md.
"""

from __future__ import annotations

import copy
import numbers
import operator
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import Tensor

from worldflux.core.exceptions import (
    StateDeviceError,
    StateError,
    StateShapeError,
)
from worldflux.core.serialization import codec, shm
from worldflux.core.serialization.packing import Packing

_devices: dict[Any, tuple[torch.device, bool]] = {}  # device -> (parsed, is cpu); parsing costs


def _as_device(device: torch.device | str) -> tuple[torch.device, bool]:
    """(`device` as a torch.device, whether it is the CPU), cached for the `to()` fast path."""
    try:
        return _devices[device]
    except (KeyError, TypeError):
        pass
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise StateError(
            f"State.to: device must be a torch.device or str, got {device!r}: {err}"
        ) from None
    if len(_devices) < 64:
        _devices[device] = (dev, dev.type == "cpu")
    return dev, dev.type == "cpu"


@dataclass(eq=False)
class State:
    """Model-specific latent tensors (batch-first) plus JSON-able metadata.

    `==` is identity; compare contents with `equal` / `allclose`. Runtime handles (shared
    memory) live in private attributes, never in `meta`, so any State can be copied and sent on.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    _attachment: shm.Attachment | None = field(default=None, init=False, repr=False)
    _published: list[str] | None = field(default=None, init=False, repr=False)  # segments
    _packing: Packing | None = field(default=None, init=False, repr=False)  # one-buffer views

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, dict):
            raise StateError(f"State: tensors must be a dict, got {type(self.tensors).__name__}")
        if not isinstance(self.meta, dict):
            raise StateError(f"State: meta must be a dict, got {type(self.meta).__name__}")
        for key, t in self.tensors.items():
            if type(key) is not str or type(t) is not Tensor:  # exact types: the fast test
                self._check_items("State")  # subclasses (Parameter) pass; the rest raise
                break

    def _check_items(self, where: str) -> None:
        """Raise `StateError` at the first key that is not a str or value that is no Tensor."""
        for key, t in self.tensors.items():
            if not isinstance(key, str):
                raise StateError(f"{where}: tensor keys must be str, got {key!r:.50}")
            if not isinstance(t, Tensor):
                raise StateError(
                    f"{where}: tensors[{key!r}] must be a Tensor, got {type(t).__name__}"
                )

    def get(self, key: str, default: Tensor | None = None) -> Tensor | None:
        """The tensor under `key`, or `default` when absent."""
        try:
            return self.tensors.get(key, default)
        except TypeError:  # unhashable
            raise StateError(f"State.get: key must be a str, got {type(key).__name__}") from None

    @property
    def batch_size(self) -> int:
        """Size of the leading dimension shared by every tensor."""
        self._check_nonempty("batch_size")
        self._check_items("State.batch_size")
        sizes = set()
        for key, t in self.tensors.items():
            if t.dim() == 0:
                raise StateShapeError(f"State.batch_size: tensor {key!r} is 0-d, has no batch dim")
            sizes.add(t.shape[0])
        if len(sizes) != 1:
            raise StateShapeError(f"State.batch_size: tensors disagree on batch size: {sizes}")
        return int(sizes.pop())

    @property
    def device(self) -> torch.device:
        """Device of the tensors (all must share one)."""
        self._check_nonempty("device")
        self._check_items("State.device")
        devices = {t.device for t in self.tensors.values()}
        if len(devices) != 1:
            raise StateDeviceError(f"State.device: tensors live on several devices: {devices}")
        return devices.pop()

    def _check_nonempty(self, where: str) -> None:
        if not self.tensors:
            raise StateError(f"State.{where}: the State holds no tensors")

    def to(self, device: torch.device | str) -> State:
        """A new State on `device`; meta is copied (shallow). Same device: no tensor is copied."""
        dev, cpu = _as_device(device)
        tensors = self.tensors
        try:
            for t in tensors.values():
                if (not t.is_cpu) if cpu else (t.device != dev):  # is_cpu: torch's cheapest test
                    return State({k: v.to(dev) for k, v in tensors.items()}, dict(self.meta))
        except AttributeError:  # a value that is no Tensor (the dict was changed since)
            self._check_items("State.to")
            raise
        except (RuntimeError, AssertionError, NotImplementedError) as err:
            raise StateError(
                f"State.to: cannot move the tensors to device {dev} "
                f"(unavailable, or no data to copy): {err}"
            ) from None
        return _new(dict(tensors), dict(self.meta))

    def detach(self) -> State:
        """A new State cut from the autograd graph; meta is copied (shallow)."""
        self._check_items("State.detach")
        return _new({k: v.detach() for k, v in self.tensors.items()}, dict(self.meta))

    def clone(self) -> State:
        """A deep copy: independent tensors and a deep-copied meta."""
        self._check_items("State.clone")
        try:
            meta = copy.deepcopy(self.meta)
        except Exception as err:  # whatever a user object's __deepcopy__/__reduce__ raises
            raise StateError(
                f"State.clone: meta must be deep-copyable, got {type(err).__name__}: {err}"
            ) from None
        return _new({k: v.clone() for k, v in self.tensors.items()}, meta)

    def validate(self) -> State:
        """Raise `StateError` unless keys are str, tensors share batch size and device."""
        self._check_nonempty("validate")
        self._check_items("State.validate")
        batch: int | None = None
        device: torch.device | None = None
        for key, t in self.tensors.items():
            if t.dim() == 0:
                raise StateShapeError(f"State.validate: tensor {key!r} is 0-d (no batch dim)")
            if batch is None:
                batch, device = int(t.shape[0]), t.device
            elif t.shape[0] != batch:
                raise StateShapeError(
                    f"State.validate: tensor {key!r} has batch {t.shape[0]}, expected {batch}"
                )
            elif t.device != device:
                raise StateDeviceError(
                    f"State.validate: tensor {key!r} is on {t.device}, expected {device}"
                )
        return self

    @overload
    def __getitem__(self, index: str) -> Tensor: ...

    @overload
    def __getitem__(self, index: Any) -> State: ...

    def __getitem__(self, index: Any) -> Tensor | State:
        """`state["latent"]`: the tensor under a key (missing: `KeyError`, as in a dict or a
        TensorDict). Any other index selects along the batch dimension: `state[2:5]`,
        `state[mask]`, `state[[0, 3]]`.

        Every batch selection keeps the batch dimension, so `StateShapeError` refuses an int (or
        any 0-d index: numpy ints, 0-d tensors, bools) and None. A tuple is refused too, even a
        1-tuple such as `state[mask,]`: a State indexes the batch dimension only, and the
        tensors' other dimensions differ from key to key; write `state[x]`, not `state[(x,)]`.
        """
        if isinstance(index, str):
            try:
                return self.tensors[index]
            except KeyError:
                raise KeyError(
                    f"State[{index!r:.100}]: no tensor under this key; keys: {list(self.tensors)}"
                ) from None
        _check_index(index)
        self.validate()
        out = {}
        for key, t in self.tensors.items():
            try:
                out[key] = t[index]
            except (IndexError, RuntimeError, TypeError, ValueError) as err:
                raise StateShapeError(
                    f"State[...]: cannot index tensor {key!r} of shape {list(t.shape)} with "
                    f"{type(index).__name__}: {err}"
                ) from None
        return _new(out, dict(self.meta))

    @staticmethod
    def stack(states: list[State], dim: int = 0) -> State:
        """Stack States key by key along a new dimension `dim`; meta from the first."""
        return _combine(states, dim, torch.stack, "stack")

    @staticmethod
    def cat(states: list[State], dim: int = 0) -> State:
        """Concatenate States key by key along `dim`; meta from the first."""
        return _combine(states, dim, torch.cat, "cat")

    def equal(self, other: State) -> bool:
        """Same keys, dtypes, shapes, devices, values (NaN equals NaN) and meta."""
        return _compare(self, other, 0.0, 0.0, "equal")

    def allclose(self, other: State, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Like `equal`, but floating values may differ within `torch.allclose` tolerances."""
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if not isinstance(tol, numbers.Real) or isinstance(tol, bool) or not tol >= 0:
                raise StateError(f"State.allclose: {name} must be a real number >= 0, got {tol!r}")
        return _compare(self, other, float(rtol), float(atol), "allclose")

    # -- bytes ---------------------------------------------------------------------------------

    def serialize(
        self, version: str = "v1", format: str = "binary", *, checksum: bool | str = False
    ) -> bytes:
        """The State as v1 bytes (a safetensors file); tensors copied once, to host.

        `checksum=True` (xxh3_64, or crc32 without xxhash) makes any corruption detectable.
        """
        codec.check_version(version, format)
        return codec.encode(self.tensors, self.meta, checksum=checksum, packing=self._packing)

    @classmethod
    def deserialize(cls, data: bytes | bytearray | memoryview, *, copy: bool = True) -> State:
        """Parse v1 bytes (or any safetensors file). `copy=False` returns views into `data`.

        The tensors of one call share a single fresh allocation (or `data` itself).
        Malformed input raises `StateError` and nothing else.
        """
        tensors, meta, packing = codec.decode(data, copy=copy)
        state = _new(tensors, meta) if cls is State else cls(tensors, meta)  # keys/values checked
        state._packing = packing
        return state

    def packed(self) -> State:
        """A copy (CPU tensors only) whose tensors are views of one buffer, so serializing or
        publishing it again copies that buffer once. Write new values into the tensors."""
        tensors, meta, packing = codec.pack(self.tensors, self.meta)
        state = _new(tensors, meta)
        state._packing = packing
        return state

    # -- shared memory -------------------------------------------------------------------------

    def to_shared_memory(self, namespace: str = "default", *, checksum: bool | str = False) -> dict:
        """Write the State into one new POSIX segment; returns a JSON-able descriptor.

        `namespace`: 1-64 ASCII letters, digits, '_', '-' or '.' (e.g. "my_state"); the segment
        is named /worldflux_<namespace>_<pid>_<n>_<nonce>.
        """
        descriptor = shm.publish(self.tensors, self.meta, namespace, checksum, self._packing)
        if self._published is None:
            self._published = []
        self._published.append(descriptor["name"])  # close_shared_memory removes every one
        return descriptor

    @classmethod
    def from_shared_memory(
        cls, descriptor: dict, copy: bool = False, *, namespace: str | None = None
    ) -> State:
        """Attach to a published State: zero-copy views (or fresh tensors) of its segment's
        one mapping in this process (shared with this process's other attachments to it)."""
        tensors, meta, handle, packing = shm.attach(descriptor, copy=copy, namespace=namespace)
        state = _new(tensors, meta) if cls is State else cls(tensors, meta)  # keys/values checked
        state._attachment, state._packing = handle, packing
        if copy:
            state._published = [descriptor["name"]]  # lets the consumer unlink after copying
        return state

    def close_shared_memory(self, unlink: bool = True) -> None:
        """Release this State's mapping and, with `unlink`, remove its segment(s).

        A State published several times removes every segment it published.
        Views already handed out stay valid: the mapping lives until the last one is freed.
        Like closing a closed file, closing again, or closing a State that was never shared,
        does nothing (so `finally:` blocks can close unconditionally).
        """
        handle, names = self._attachment, self._published or []
        if handle is not None:
            self._packing = None  # it holds the mapping too: unmap once the views are gone
            handle.close(unlink=unlink)
        if unlink:
            for name in names:
                shm.unlink_segment(name)

    def __getstate__(self) -> dict[str, Any]:
        """Copy/pickle only the data: shared-memory handles stay with this object."""
        return {"tensors": self.tensors, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tensors, self.meta = state["tensors"], state["meta"]


def _new(tensors: dict[str, Tensor], meta: dict[str, Any]) -> State:
    """A State from dicts known to be well-typed (str keys, Tensor values), skipping
    `__init__` and its checks: the `to()` and decode fast paths."""
    state = State.__new__(State)
    state.tensors, state.meta = tensors, meta
    return state


def _check_index(index: Any) -> None:
    """Refuse what would drop the batch dim (int-likes, 0-d tensors/arrays), add one (None),
    or index past it (tuples)."""
    if isinstance(index, tuple):  # state[0,], state[:2, 0], state[..., 0], named tuples
        raise StateShapeError(
            f"State[{index!r:.50}]: a tuple index is refused: a State indexes the batch "
            "dimension only (its tensors' other dimensions differ by key); expected a slice, "
            "a bool mask or a list of indices, e.g. state[x] instead of state[(x,)]"
        )
    if index is None:
        raise StateShapeError(
            "State[None]: None would add a dimension in front of the batch dimension; "
            "expected a slice, a bool mask or a list of indices"
        )
    ndim = getattr(index, "ndim", None)  # tensors and numpy arrays/scalars
    if ndim == 0 or (ndim is None and isinstance(index, numbers.Integral)):
        try:
            i = operator.index(index)
            hint = f"state[{i}:{i + 1 or None}]"
        except TypeError:  # a 0-d float tensor or numpy bool
            hint = "a slice or a 1-d index"
        raise StateShapeError(
            f"State[{index!r:.50}]: an int index would drop the batch dimension (as would "
            f"any 0-d index); expected a slice, mask or index list such as {hint}"
        )


def _combine(states: Any, dim: int, op: Any, name: str) -> State:
    if not isinstance(states, (list, tuple)) or not states:
        raise StateError(f"State.{name}: expected a non-empty list of States, got {states!r:.80}")
    if not all(isinstance(s, State) for s in states):
        raise StateError(f"State.{name}: every item must be a State")
    keys = list(states[0].tensors)
    for i, s in enumerate(states):
        if set(s.tensors) != set(keys):
            raise StateError(
                f"State.{name}: states[{i}] has keys {sorted(s.tensors)}, expected {sorted(keys)}"
            )
        if keys:  # (States without tensors combine into one)
            try:
                s.validate()
            except StateError as err:
                raise type(err)(f"State.{name}: states[{i}] is invalid: {err}") from None
    out = {}
    for k in keys:
        dtype = states[0].tensors[k].dtype
        for i, s in enumerate(states):
            if s.tensors[k].dtype != dtype:
                raise StateError(
                    f"State.{name}: tensors {k!r} must share one dtype, got {dtype} in "
                    f"states[0] and {s.tensors[k].dtype} in states[{i}]"
                )
        try:
            out[k] = op([s.tensors[k] for s in states], dim)
        except (RuntimeError, IndexError, TypeError) as err:
            raise StateShapeError(f"State.{name}: tensors {k!r} do not combine: {err}") from None
    return _new(out, dict(states[0].meta))


def _compare(a: State, b: Any, rtol: float, atol: float, name: str) -> bool:
    if not isinstance(b, State) or a.tensors.keys() != b.tensors.keys() or a.meta != b.meta:
        return False
    a._check_items(f"State.{name}")
    b._check_items(f"State.{name}")
    for key, x in a.tensors.items():
        y = b.tensors[key]
        if x.dtype != y.dtype or x.shape != y.shape or x.device != y.device:
            return False
        try:
            if x.is_floating_point() or x.is_complex():
                if x.element_size() == 1:  # float8: compare in float32 (exact)
                    x, y = x.float(), y.float()
                if not torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                    return False
            elif not torch.equal(x, y):
                return False
        except (RuntimeError, NotImplementedError) as err:
            raise StateError(
                f"State.{name}: cannot compare tensors {key!r} on {x.device}: {err}"
            ) from None
    return True
