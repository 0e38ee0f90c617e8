"""The `WorldModel` contract, checked on every registered family's ``debug`` preset."""

from __future__ import annotations

import importlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError, StateError
from worldflux.core.model import WorldModel
from worldflux.core.registry import FAMILIES, create_world_model
from worldflux.core.spec import ActionSpec, ObsSpec, same_device
from worldflux.core.state import State

OBS = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
SPACES = {
    "discrete": gym.spaces.Discrete(3),
    "continuous": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
}


def _model(family: str, action: str = "discrete", seed: int = 0) -> WorldModel:
    pytest.importorskip(f"worldflux.models.{family}")
    return create_world_model(f"{family}:debug", OBS, SPACES[action], seed=seed)


def _actions(model: WorldModel, *lead: int) -> torch.Tensor:
    spec = model.action_spec
    if spec.discrete:
        idx = torch.randint(0, spec.dim, lead)
        return torch.nn.functional.one_hot(idx, spec.dim).float()
    return torch.rand(*lead, spec.dim) * 2 - 1


# Families whose loss needs a specific sequence length (TD-MPC2 trains on horizon + 1 rows).
SEQ_LEN = {"tdmpc2": lambda cfg: cfg.horizon + 1}


def _batch(model: WorldModel, B: int = 3) -> Batch:
    T = SEQ_LEN.get(model.family, lambda cfg: 6)(model.config)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_last = torch.zeros(B, T, dtype=torch.bool)
    is_last[:, -1] = True
    action = _actions(model, B, T)
    action[:, 0] = 0.0
    return Batch(
        obs=torch.rand(B, T, 6) * 2 - 1,
        action=action,
        reward=torch.randn(B, T),
        is_first=is_first,
        is_terminal=is_last & (torch.arange(B) == 0).unsqueeze(1),
        is_last=is_last,
    )


def _same_batch(state: State, batch: int) -> None:
    state.validate()
    assert state.batch_size == batch


families = pytest.mark.parametrize("family", sorted(FAMILIES))


@families
@pytest.mark.parametrize("action", sorted(SPACES))
@pytest.mark.parametrize("batch", [1, 5])
def test_method_shapes(family: str, action: str, batch: int) -> None:
    model = _model(family, action)
    _same_batch(model.initial_state(batch), batch)
    state = model.encode(torch.rand(batch, 6))
    _same_batch(state, batch)
    state = model.update(state, _actions(model, batch), torch.rand(batch, 6))
    _same_batch(state, batch)
    nxt = model.transition(state, _actions(model, batch))
    _same_batch(nxt, batch)
    feat = model.features(state)
    assert feat.dim() == 2 and feat.shape[0] == batch
    preds = model.decode(state)
    assert set(preds) >= {h for h in model.heads if h != "obs"}
    for head in ("reward", "continue"):
        if head in model.heads:
            assert preds[head].shape == (batch,)
    if "continue" in preds:
        assert bool(((preds["continue"] >= 0) & (preds["continue"] <= 1)).all())
    if "obs" in preds:
        assert preds["obs"].shape == (batch, 6)
    only = model.decode(state, heads=[model.heads[0]])
    assert set(only) <= {model.heads[0]} | {k for k in only if k.startswith("obs")}


@families
def test_rollout_length(family: str) -> None:
    model = _model(family)
    state = model.encode(torch.rand(4, 6))
    traj = model.rollout(state, actions=_actions(model, 4, 5))
    assert traj.horizon == 5
    for t in traj.states.tensors.values():
        assert tuple(t.shape[:2]) == (4, 6)
    if traj.rewards is not None:
        assert traj.rewards.shape == (4, 5)
    if traj.continues is not None:
        assert traj.continues.shape == (4, 5)
    traj = model.rollout(state, policy=lambda s: _actions(model, s.batch_size), horizon=3)
    assert traj.horizon == 3 and traj.actions.shape[:2] == (4, 3)
    traj.state_at(3).validate()


@families
def test_loss_finite_and_differentiable(family: str) -> None:
    model = _model(family)
    loss, metrics = model.loss(_batch(model))
    assert loss.dim() == 0 and torch.isfinite(loss)
    for key, value in metrics.items():
        assert not (isinstance(value, torch.Tensor) and value.requires_grad), key
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "loss reached no parameter"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def _outputs(model: WorldModel, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    obs = torch.rand(3, 6)
    state = model.encode(obs)
    state = model.update(state, _actions(model, 3), obs)
    loss, _ = model.loss(_batch(model))
    preds = model.decode(state)
    return [model.features(state), loss.detach(), *preds.values()]


@families
def test_determinism_with_seed(family: str) -> None:
    a, b = _model(family, seed=7), _model(family, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    for x, y in zip(_outputs(a, 1), _outputs(b, 1), strict=True):
        assert torch.equal(x, y)
    c = _model(family, seed=8)
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


@families
def test_safetensors_roundtrip(family: str, tmp_path: Path) -> None:
    src, dst = _model(family, seed=1), _model(family, seed=2)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst.load_state_dict(load_file(str(path)))
    for x, y in zip(_outputs(src, 3), _outputs(dst, 3), strict=True):
        assert torch.equal(x, y)


@families
def test_family_exports_debug_preset(family: str) -> None:
    module = pytest.importorskip(f"worldflux.models.{family}")
    presets = importlib.import_module(module.__name__).PRESETS
    assert "debug" in presets


# --- input checks: every family, the same clear errors --------------------------------------


def _continuous(family: str) -> WorldModel:
    return _model(family, "continuous")


@families
def test_wrong_device_inputs_raise_spec_error(family: str) -> None:
    model = _continuous(family)
    state = model.encode(torch.rand(2, 6))
    meta_obs, meta_act = torch.rand(2, 6, device="meta"), torch.rand(2, 2, device="meta")
    with pytest.raises(SpecError, match=r"^obs: expected a tensor on the model's device cpu"):
        model.encode(meta_obs)
    with pytest.raises(SpecError, match=r"^obs: .*device"):
        model.update(state, _actions(model, 2), meta_obs)
    with pytest.raises(SpecError, match=r"^action: .*device cpu, got one on meta"):
        model.update(state, meta_act, torch.rand(2, 6))
    with pytest.raises(SpecError, match=r"^action: .*device"):
        model.transition(state, meta_act)
    with pytest.raises(SpecError, match=r"^actions: .*device"):
        model.rollout(state, actions=torch.rand(2, 3, 2, device="meta"))
    batch = _batch(model)
    batch.obs = batch.obs.to("meta")  # type: ignore[union-attr]
    with pytest.raises(SpecError, match=r"^batch.obs: .*device"):
        model.loss(batch)
    batch = _batch(model)
    batch.reward = batch.reward.to("meta")
    with pytest.raises(SpecError, match=r"^batch.reward: .*device"):
        model.loss(batch)
    with pytest.raises(StateError, match="device"):
        model.transition(state.to("meta"), _actions(model, 2))


def test_device_rule_matches_indexless_and_indexed_devices() -> None:
    cuda, cuda0, cuda1 = torch.device("cuda"), torch.device("cuda", 0), torch.device("cuda", 1)
    assert same_device(cuda0, cuda) and same_device(cuda, cuda0) and same_device(cuda0, cuda0)
    assert not same_device(cuda1, cuda0) and not same_device(torch.device("cpu"), cuda0)
    act, obs = ActionSpec(2, False), ObsSpec.from_space(OBS)
    with pytest.raises(SpecError, match=r"^action: expected a tensor on the model's device cuda:0"):
        act.to_model(torch.zeros(3, 2), 1, device=cuda0)  # a CPU tensor for a cuda:0 model
    with pytest.raises(SpecError, match=r"^obs: .*cuda:0, got one on cpu"):
        obs.as_dict(torch.zeros(3, 6), 1, device=cuda0)
    assert act.to_model(torch.zeros(3, 2), 1, device=torch.device("cpu")).shape == (3, 2)


@families
def test_float64_vector_obs_and_actions_are_accepted(family: str) -> None:
    model = _continuous(family)
    obs = torch.rand(3, 6, dtype=torch.float64)
    act = torch.rand(3, 2, dtype=torch.float64) * 2 - 1
    state = model.encode(obs)
    state = model.update(state, act, obs)
    nxt = model.transition(state, act)
    traj = model.rollout(state, actions=act[:, None].expand(3, 4, 2))
    assert traj.horizon == 4
    for s in (state, nxt):
        assert all(t.dtype == torch.float32 for t in s.tensors.values() if t.is_floating_point())
    assert model.features(nxt).dtype == torch.float32
    batch = _batch(model)
    batch.obs = batch.obs.double()  # type: ignore[union-attr]
    batch.action = batch.action.double()
    batch.reward = batch.reward.double()
    loss, _ = model.loss(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@families
@pytest.mark.parametrize("action", sorted(SPACES))
def test_batch_size_mismatch_raises_spec_error(family: str, action: str) -> None:
    model = _model(family, action)
    state = model.encode(torch.rand(2, 6))
    with pytest.raises(SpecError, match=r"^obs: expected batch size 2 \(the state's\), got 3"):
        model.update(state, _actions(model, 2), torch.rand(3, 6))
    with pytest.raises(SpecError, match=r"^action: expected batch size 2 \(the state's\), got 3"):
        model.update(state, _actions(model, 3), torch.rand(2, 6))
    with pytest.raises(SpecError, match=r"^action: expected batch size 2 \(the state's\), got 3"):
        model.transition(state, _actions(model, 3))
    with pytest.raises(SpecError, match=r"^actions: expected batch size 2 \(the state's\), got 3"):
        model.rollout(state, actions=_actions(model, 3, 4))
    with pytest.raises(SpecError, match=r"^action: expected batch size 2"):
        model.rollout(state, policy=lambda s: _actions(model, 3), horizon=2)


@families
@pytest.mark.parametrize("bad", [-1, 0, 2.5, True, "2", None])
def test_initial_state_rejects_bad_batch_size(family: str, bad: object) -> None:
    model = _model(family)
    with pytest.raises(SpecError, match=r"^batch_size: expected an int >= 1, got"):
        model.initial_state(bad)  # type: ignore[arg-type]
    _same_batch(model.initial_state(np.int64(2)), 2)  # type: ignore[arg-type]


@families
def test_state_without_the_family_keys_raises_state_error(family: str) -> None:
    model = _model(family)
    bogus = State({"bogus": torch.zeros(2, 4)})
    calls = {
        "transition": lambda: model.transition(bogus, _actions(model, 2)),
        "update": lambda: model.update(bogus, _actions(model, 2), torch.rand(2, 6)),
        "rollout": lambda: model.rollout(bogus, actions=_actions(model, 2, 3)),
        "decode": lambda: model.decode(bogus),
        "features": lambda: model.features(bogus),
    }
    for name, call in calls.items():
        with pytest.raises(StateError, match=r"bogus") as err:  # names the keys present
            call()
        assert "state" in str(err.value), name


@families
def test_batch_validate_rejects_non_tensors(family: str) -> None:
    model = _model(family)
    for field, value, where in [
        ("obs", np.zeros((3, 6, 6), np.float32), "batch.obs"),
        ("obs", [[0.0] * 6] * 3, "batch.obs"),
        ("obs", {"obs": np.zeros((3, 6, 6))}, r"batch.obs\['obs'\]"),
        ("action", np.zeros((3, 6, 3), np.float32), "batch.action"),
    ]:
        batch = _batch(model)
        setattr(batch, field, value)
        with pytest.raises(SpecError, match=rf"^{where}: expected a Tensor"):
            model.loss(batch)


FRAME_STACKS = {
    "hwc": gym.spaces.Box(0, 255, (64, 64, 12), np.uint8),
    "chw": gym.spaces.Box(0, 255, (12, 64, 64), np.uint8),
}


@pytest.mark.parametrize("layout", sorted(FRAME_STACKS))
def test_frame_stacked_image_layout(layout: str) -> None:
    field = ObsSpec.from_space(FRAME_STACKS[layout]).fields["obs"]
    assert field.is_image and field.channels_last == (layout == "hwc")
    assert field.chw == (12, 64, 64)
    layouts = {(64, 64, 3): True, (3, 64, 64): False, (84, 84, 4): True, (1, 64, 64): False,
               (64, 96, 3): True, (3, 64, 96): False}  # fmt: skip
    for shape, last in layouts.items():
        spec = ObsSpec.from_space(gym.spaces.Box(0, 255, shape, np.uint8))
        assert spec.fields["obs"].channels_last == last, shape
    for shape in [(64, 64, 64), (8, 3, 8)]:
        with pytest.raises(SpecError, match=r"obs_space: cannot tell .* HWC or CHW.*FieldSpec"):
            ObsSpec.from_space(gym.spaces.Box(0, 255, shape, np.uint8))


@families
@pytest.mark.parametrize("layout", sorted(FRAME_STACKS))
def test_frame_stacked_images_encode(family: str, layout: str) -> None:
    pytest.importorskip(f"worldflux.models.{family}")
    space = FRAME_STACKS[layout]
    model = create_world_model(f"{family}:debug", space, SPACES["continuous"], seed=0)
    obs = torch.randint(0, 256, (2, *space.shape), dtype=torch.uint8)
    _same_batch(model.encode(obs), 2)
