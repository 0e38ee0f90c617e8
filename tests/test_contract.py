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
from worldflux.core.model import WorldModel
from worldflux.core.registry import FAMILIES, create_world_model
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
