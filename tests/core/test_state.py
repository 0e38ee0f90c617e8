"""State container: errors, copies, batch operations, equality."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from worldflux.core.exceptions import StateDeviceError, StateError, StateShapeError
from worldflux.core.state import State


def make(batch: int = 4) -> State:
    return State(
        {"deter": torch.randn(batch, 8), "stoch": torch.randn(batch, 3, 3)},
        {"latent_type": "rssm", "nested": {"a": [1, 2]}},
    )


def test_get_batch_size_device() -> None:
    s = make(5)
    assert s.batch_size == 5
    assert s.device == torch.device("cpu")
    assert s.get("missing") is None
    default = torch.zeros(1)
    assert s.get("missing", default=default) is default
    assert s.get("deter") is s.tensors["deter"]


@pytest.mark.parametrize("prop", ["batch_size", "device"])
def test_empty_state_errors(prop: str) -> None:
    with pytest.raises(StateError, match="no tensors"):
        _ = getattr(State(), prop)
    with pytest.raises(StateError, match="no tensors"):
        State().validate()


def test_zero_d_and_batch_mismatch() -> None:
    s = State({"x": torch.tensor(1.0)})
    with pytest.raises(StateShapeError, match="'x' is 0-d"):
        _ = s.batch_size
    with pytest.raises(StateShapeError, match="0-d"):
        s.validate()
    bad = State({"a": torch.zeros(2, 1), "b": torch.zeros(3, 1)})
    with pytest.raises(StateShapeError, match="'b' has batch 3, expected 2"):
        bad.validate()
    with pytest.raises(StateShapeError, match="disagree"):
        _ = bad.batch_size


def test_non_str_keys_and_non_tensors() -> None:
    with pytest.raises(StateError, match="keys must be str"):
        State({1: torch.zeros(2)}).validate()  # type: ignore[dict-item]
    with pytest.raises(StateError, match="must be a Tensor"):
        State({"a": [1, 2]}).validate()  # type: ignore[dict-item]
    with pytest.raises(StateError, match="tensors must be a dict"):
        State([torch.zeros(1)])  # type: ignore[arg-type]
    with pytest.raises(StateError, match="meta must be a dict"):
        State({}, meta=[1])  # type: ignore[arg-type]


def test_mixed_devices_error() -> None:
    s = State({"a": torch.zeros(2), "b": torch.zeros(2, device="meta")})
    with pytest.raises(StateDeviceError, match="'b' is on meta"):
        s.validate()
    with pytest.raises(StateDeviceError, match="several devices"):
        _ = s.device
    with pytest.raises(StateDeviceError, match="share one device"):
        s.serialize()


def test_to_same_device_shares_tensors_copies_meta() -> None:
    s = make()
    for target in ("cpu", torch.device("cpu")):
        moved = s.to(target)
        assert moved is not s
        assert moved.tensors is not s.tensors
        assert all(moved.tensors[k] is s.tensors[k] for k in s.tensors)
        assert moved.meta == s.meta and moved.meta is not s.meta


def test_to_other_device_moves_every_tensor() -> None:
    s = State({"a": torch.ones(2, 3)})
    moved = s.to("meta")
    assert moved.device == torch.device("meta")
    assert s.device == torch.device("cpu")
    with pytest.raises(StateError, match="device must be"):
        s.to("not-a-device")


def test_detach_and_clone() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    s = State({"x": x * 2}, {"nested": {"a": [1]}})
    d = s.detach()
    assert not d.tensors["x"].requires_grad
    assert d.tensors["x"].data_ptr() == s.tensors["x"].data_ptr()
    assert d.meta == s.meta and d.meta is not s.meta
    c = s.clone()
    assert c.tensors["x"].data_ptr() != s.tensors["x"].data_ptr()
    assert torch.equal(c.tensors["x"], s.tensors["x"])
    c.meta["nested"]["a"].append(2)
    assert s.meta["nested"]["a"] == [1]  # deep copy


def test_indexing_slices_masks_lists() -> None:
    s = make(6)
    sub = s[2:5]
    assert sub.batch_size == 3
    assert torch.equal(sub.tensors["deter"], s.tensors["deter"][2:5])
    mask = torch.tensor([True, False, True, False, False, True])
    m = s[mask]
    assert m.batch_size == 3
    assert torch.equal(m.tensors["stoch"], s.tensors["stoch"][mask])
    assert s[[0, 5]].batch_size == 2
    assert sub.meta == s.meta and sub.meta is not s.meta
    with pytest.raises(StateError, match="int index would drop"):
        s[2]
    with pytest.raises(StateShapeError, match="cannot index tensor 'deter'"):
        s[torch.tensor([True, False])]


def test_a_string_key_returns_its_tensor() -> None:
    s = make(6)
    assert s["deter"] is s.tensors["deter"]  # as in a dict or TensorDict
    assert State({"latent": torch.zeros(2, 4)})["latent"].shape == (2, 4)
    assert State({"x": torch.tensor(1.0), "y": torch.zeros(3)})["x"].dim() == 0  # no validate()
    assert isinstance(s[1:3], State) and isinstance(s[torch.tensor([0, 2])], State)
    assert isinstance(s[np.array([True, False] * 3)], State)
    with pytest.raises(KeyError, match=r"State\['latent'\]: no tensor .*\['deter', 'stoch'\]"):
        s["latent"]
    with pytest.raises(KeyError, match=r"keys: \[\]"):
        State()["x"]
    with pytest.raises(StateShapeError, match="int index would drop"):
        s[0]


def test_stack_and_cat() -> None:
    a, b = make(2), make(2)
    st = State.stack([a, b])
    assert st.tensors["deter"].shape == (2, 2, 8)
    ct = State.cat([a, b])
    assert ct.batch_size == 4
    assert torch.equal(ct.tensors["deter"][2:], b.tensors["deter"])
    with pytest.raises(StateError, match="non-empty list"):
        State.cat([])
    with pytest.raises(StateError, match="has keys"):
        State.cat([a, State({"deter": torch.zeros(2, 8)})])
    with pytest.raises(StateShapeError, match="do not combine"):
        State.stack([a, make(3)])


def test_equal_and_allclose() -> None:
    s = make()
    assert s.equal(s.clone())
    other = s.clone()
    other.tensors["deter"] = other.tensors["deter"] + 1e-7
    assert not s.equal(other)
    assert s.allclose(other)
    other.meta["x"] = 1
    assert not s.allclose(other)
    nan = State({"a": torch.tensor([float("nan"), 1.0])})
    assert nan.equal(nan.clone())
    assert not s.equal(State({"deter": s.tensors["deter"]}, s.meta))
    f8 = State({"a": torch.randn(3).to(torch.float8_e5m2)})
    assert f8.equal(f8.clone())
    assert s != s.clone()  # `==` is identity; contents via equal()


def test_deepcopy_and_copy() -> None:
    s = make()
    c = copy.deepcopy(s)
    assert c.equal(s) and c.tensors["deter"].data_ptr() != s.tensors["deter"].data_ptr()


def test_construction_checks_keys_and_values() -> None:
    with pytest.raises(StateError, match=r"State: tensors\['a'\] must be a Tensor, got list"):
        State({"ok": torch.zeros(2), "a": [1]})  # type: ignore[dict-item]
    with pytest.raises(StateError, match="State: tensor keys must be str, got 1"):
        State({"a": torch.zeros(2), 1: torch.zeros(2)})  # type: ignore[dict-item]
    p = torch.nn.Parameter(torch.zeros(2))
    assert State({"p": p}).tensors["p"] is p  # Tensor subclasses are fine


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.batch_size,
        lambda s: s.device,
        lambda s: s.to("cpu"),
        lambda s: s.to("meta"),
        lambda s: s.detach(),
        lambda s: s.clone(),
        lambda s: s.equal(s),
        lambda s: s.allclose(s),
        lambda s: s.validate(),
        lambda s: s[0:1],
        lambda s: State.cat([s, s]),
    ],
)
def test_methods_refuse_a_non_tensor_put_in_later(call) -> None:
    s = make()
    s.tensors["stoch"] = np.zeros((4, 3, 3))  # type: ignore[assignment]
    with pytest.raises(StateError, match=r"tensors\['stoch'\] must be a Tensor, got ndarray"):
        call(s)


@pytest.mark.parametrize(
    "index",
    [np.int64(1), np.array(1), torch.tensor(1), True, np.True_, torch.tensor(True), -1],
)
def test_int_like_indices_are_refused(index: object) -> None:
    with pytest.raises(StateShapeError, match="int index would drop the batch dimension"):
        make()[index]


def test_none_index_is_refused_and_1d_indices_keep_the_batch_dim() -> None:
    s = make(4)
    with pytest.raises(StateShapeError, match=r"State\[None\]: None would add a dimension"):
        s[None]
    assert s[torch.tensor([1])].batch_size == 1
    assert s[np.array([1, 2])].batch_size == 2
    assert s[-1:].batch_size == 1


def test_cat_and_stack_validate_inputs_and_dtypes() -> None:
    bad = State({"a": torch.zeros(2, 1), "b": torch.zeros(3)})
    for op in (State.cat, State.stack):
        with pytest.raises(StateShapeError, match=r"states\[0\] is invalid: .*'b' has batch 3"):
            op([bad, bad])
    f32, f64 = State({"a": torch.zeros(2)}), State({"a": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(StateError, match=r"'a' must share one dtype, got torch.float32 in "):
        State.cat([f32, f32, f64])
    assert State.cat([State(), State()]).tensors == {}


def test_small_misuses_raise_state_errors() -> None:
    s = make()
    with pytest.raises(StateError, match="State.get: key must be a str, got list"):
        s.get([])  # type: ignore[arg-type]
    with pytest.raises(StateError, match="rtol must be a real number >= 0, got 'x'"):
        s.allclose(s, rtol="x")  # type: ignore[arg-type]
    with pytest.raises(StateError, match="atol must be a real number >= 0, got -1"):
        s.allclose(s, atol=-1)
    meta = State({"a": torch.zeros(2, device="meta")})
    with pytest.raises(StateError, match="State.equal: cannot compare tensors 'a' on meta"):
        meta.equal(State({"a": torch.zeros(2, device="meta")}))
    with pytest.raises(StateError, match="State.clone: meta must be deep-copyable"):
        State({"a": torch.zeros(2)}, {"lock": threading.Lock()}).clone()
    with pytest.raises(StateError, match="State.to: cannot move the tensors to device cpu"):
        meta.to("cpu")  # a meta tensor has no data to copy


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without usable CUDA")
def test_to_an_unavailable_device_is_a_state_error() -> None:
    with pytest.raises(StateError, match="State.to: cannot move the tensors to device cuda"):
        make().to("cuda")


@pytest.mark.parametrize("index", [(0,), (slice(0, 2),), (slice(None), 0), (Ellipsis, 0), ()])
def test_tuple_indices_are_refused(index: tuple) -> None:
    with pytest.raises(StateShapeError, match=r"a tuple index .* batch dimension only"):
        make(4)[index]
