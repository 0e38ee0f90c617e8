"""State container: errors, copies, batch operations, equality."""

from __future__ import annotations

import copy

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
    with pytest.raises(StateError, match="not a Tensor"):
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
