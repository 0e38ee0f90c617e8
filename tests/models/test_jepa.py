"""JEPA world model: contract shapes, history, heads, loss, EMA target, config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError, SpecError, StateError
from worldflux.core.registry import create_world_model
from worldflux.models.jepa import JEPA, PRESETS, JEPAConfig
from worldflux.models.jepa.predictor import Predictor

IMG = spaces.Box(0, 255, (64, 64, 3), np.uint8)
VEC = spaces.Box(-1.0, 1.0, (5,), np.float32)
ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)


def make(obs_space: spaces.Space = IMG, **overrides: object) -> JEPA:
    model = create_world_model("jepa:debug", obs_space, ACT, seed=0, **overrides)
    assert isinstance(model, JEPA)
    return model


def obs_for(space: spaces.Space, *lead: int) -> torch.Tensor:
    if isinstance(space, spaces.Box) and space.dtype == np.uint8:
        return torch.randint(0, 256, (*lead, *space.shape), dtype=torch.uint8)
    return torch.randn(*lead, *space.shape)


def batch_for(space: spaces.Space, b: int = 3, t: int = 5) -> Batch:
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    action = torch.rand(b, t, 2) * 2 - 1
    action[is_first] = 0.0
    return Batch(
        obs=obs_for(space, b, t),
        action=action,
        reward=torch.zeros(b, t),
        is_first=is_first,
        is_terminal=torch.zeros(b, t, dtype=torch.bool),
        is_last=torch.zeros(b, t, dtype=torch.bool),
    )


@pytest.mark.parametrize("space", [IMG, VEC], ids=["image", "vector"])
@pytest.mark.parametrize("b", [1, 3, 5])
def test_contract_shapes(space: spaces.Space, b: int) -> None:
    model = make(space).eval()
    d = model.config.rep_dim
    state = model.encode(obs_for(space, b))
    assert state.tensors["rep"].shape == (b, d)
    nxt = model.transition(state, torch.zeros(b, 2))
    assert nxt.tensors["rep"].shape == (b, d)
    upd = model.update(nxt, torch.zeros(b, 2), obs_for(space, b))
    assert model.features(upd).shape == (b, d)
    traj = model.rollout(state, actions=torch.zeros(b, 4, 2))
    assert traj.states.tensors["rep"].shape == (b, 5, d)
    assert traj.rewards is None and traj.continues is None
    assert model.initial_state(b).tensors["rep"].shape == (b, d)


def test_history_is_kept_in_state() -> None:
    model = make(history=3).eval()
    state = model.encode(obs_for(IMG, 2))
    hist = state.tensors["rep_history"]
    assert hist.shape == (2, 3, 16)
    assert torch.equal(hist[:, 0], hist[:, 2])  # filled with the first rep
    nxt = model.transition(state, torch.ones(2, 2))
    assert torch.equal(nxt.tensors["rep_history"][:, :2], hist[:, 1:])  # shifted left
    assert torch.equal(nxt.tensors["rep_history"][:, -1], nxt.tensors["rep"])
    with pytest.raises(StateError, match="rep_history"):
        model.transition(type(state)({"rep": state.tensors["rep"]}), torch.ones(2, 2))


@pytest.mark.parametrize("conditioning", ["adaln", "concat"])
@pytest.mark.parametrize("k", [1, 4])
def test_predictor_shapes_and_action_dependence(conditioning: str, k: int) -> None:
    pred = Predictor(8, 2, 32, 2, k, conditioning)
    for p in pred.parameters():  # leave the zero init so the output depends on everything
        torch.nn.init.normal_(p, std=0.1)
    hist = torch.randn(5, k, 8)
    out = pred(hist, torch.zeros(5, 2))
    assert out.shape == (5, 8)
    assert not torch.allclose(out, pred(hist, torch.ones(5, 2)))
    with pytest.raises(SpecError, match="history"):
        pred(torch.randn(5, k + 1, 8), torch.zeros(5, 2))
    with pytest.raises(SpecError, match="action"):
        pred(hist, torch.zeros(5, 3))


def test_predictor_starts_as_identity() -> None:
    pred = Predictor(8, 2, 32, 2, 2, "adaln")
    hist = torch.randn(4, 2, 8)
    assert torch.equal(pred(hist, torch.randn(4, 2)), hist[:, -1])


def test_decode_has_rep_only() -> None:
    model = make().eval()
    state = model.encode(obs_for(IMG, 2))
    assert torch.equal(model.decode(state)["rep"], state.tensors["rep"])
    with pytest.raises(SpecError, match="no pixel decoder"):
        model.decode(state, ["obs"])
    with pytest.raises(SpecError, match="reward"):
        model.decode(state, ["reward"])
    with pytest.raises(SpecError, match="available"):
        model.decode(state, ["value"])


@pytest.mark.parametrize("reg", ["sigreg", "vicreg", "ema", "none"])
def test_loss_is_finite_and_reports_diagnostics(reg: str) -> None:
    model = make(regularizer=reg, history=2)
    loss, metrics = model.loss(batch_for(IMG))
    assert loss.dim() == 0 and torch.isfinite(loss)
    want = {"loss", "pred_loss", "ar_loss", "reg_loss", "emb_std", "emb_std_min", "eff_rank",
            "emb_std_prenorm", "emb_std_prenorm_min"}  # fmt: skip
    assert set(metrics) == want
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if reg == "none" or reg == "ema":
        assert float(metrics["reg_loss"]) == 0.0


def test_loss_is_deterministic_and_masks_episode_starts() -> None:
    batch = batch_for(IMG)
    torch.manual_seed(1)  # SIGReg draws its directions from the global RNG
    la, _ = make().loss(batch)
    torch.manual_seed(1)
    lb, _ = make().loss(batch)
    assert torch.equal(la, lb)
    model = make(regularizer="none")
    _, m1 = model.loss(batch)
    batch.is_first[:, 2] = True  # row 2 begins a new episode: (1 -> 2) must not be predicted
    batch.obs[:, 2:] = obs_for(IMG, 3, 3)
    _, m2 = model.loss(batch)
    assert float(m1["pred_loss"]) != float(m2["pred_loss"])
    with pytest.raises(SpecError, match="T >= 2"):
        model.loss(batch_for(IMG, t=1))


def test_ema_target_update() -> None:
    model = make(regularizer="ema", ema_decay=0.9)
    assert model.target is not None
    target = model.target.target
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    model.update_target()
    for old, new, online in zip(
        before, target.parameters(), model.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    loss, _ = model.loss(batch_for(IMG))
    loss.backward()
    assert all(p.grad is None for p in target.parameters())  # stop-gradient


def test_config_validation_and_presets() -> None:
    assert set(PRESETS) == {"debug", "small", "base"}
    with pytest.raises(ConfigError, match="regularizer"):
        JEPAConfig(regularizer="magic")
    with pytest.raises(ConfigError, match="history"):
        JEPAConfig(history=0)
    with pytest.raises(ConfigError, match="update_fusion"):
        JEPAConfig(update_fusion=2.0)
    with pytest.raises(ConfigError, match="rep_dim"):
        create_world_model("jepa:debug", IMG, ACT, rep_dim=-3)


def test_update_fusion_blends_prediction() -> None:
    plain, fused = make().eval(), make(update_fusion=0.5).eval()
    state = plain.encode(obs_for(IMG, 2))
    obs, act = obs_for(IMG, 2), torch.ones(2, 2)
    enc = plain.embed(obs)
    pred = plain.transition(state, act).tensors["rep"]
    torch.testing.assert_close(plain.update(state, act, obs).tensors["rep"], enc)
    torch.testing.assert_close(fused.update(state, act, obs).tensors["rep"], 0.5 * enc + 0.5 * pred)


def test_bad_inputs_name_the_argument() -> None:
    model = make().eval()
    with pytest.raises(SpecError, match="obs"):
        model.encode(torch.zeros(2, 3, 64, 64))
    state = model.encode(obs_for(IMG, 2))
    with pytest.raises(SpecError, match="action"):
        model.transition(state, torch.zeros(2, 3))


def test_prenorm_std_shows_collapse_that_batchnorm_hides() -> None:
    model = make(VEC).train()
    _, healthy = model.loss(batch_for(VEC))
    last = [m for m in model.encoder.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # shrink the head's output 30x: a collapsing encoder
        last.weight.mul_(1 / 30)
        last.bias.mul_(1 / 30)
    _, collapsed = model.loss(batch_for(VEC))
    for m in (healthy, collapsed):
        assert 0.9 < float(m["emb_std"]) < 1.1  # pinned by the BatchNorm either way
    assert float(collapsed["emb_std_prenorm"]) < 0.05 * float(healthy["emb_std_prenorm"])
    assert float(collapsed["emb_std_prenorm_min"]) <= float(collapsed["emb_std_prenorm"])
    plain = make(VEC, enc_batch_norm=False).train()
    _, m = plain.loss(batch_for(VEC))
    assert torch.equal(m["emb_std"], m["emb_std_prenorm"])  # no BatchNorm: the same tensor


def test_update_validates_action_even_without_fusion() -> None:
    model = make(VEC).eval()
    assert model.config.update_fusion == 0.0
    state = model.encode(obs_for(VEC, 2))
    with pytest.raises(SpecError, match="action: expected shape"):
        model.update(state, torch.zeros(2, 5), obs_for(VEC, 2))
    with pytest.raises(SpecError, match="obs: expected batch size 2"):
        model.update(state, torch.zeros(2, 2), obs_for(VEC, 3))


def test_sigreg_defaults_follow_the_lejepa_reference() -> None:
    cfg = JEPAConfig()
    assert (cfg.sigreg_knots, cfg.sigreg_t_max) == (17, 3.0)  # linspace(0, 3, 17)
