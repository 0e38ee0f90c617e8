"""DreamerV3: state layout, ingredients with hand-computed values, errors, sizes, isolation."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflux.agents.dreamer import DreamerAgent, actor_critic_step, make_optimizers
from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError, SpecError, StateError
from worldflux.core.registry import count_parameters, create_world_model
from worldflux.core.state import State
from worldflux.models.dreamerv3 import PRESETS, DreamerV3, DreamerV3Config
from worldflux.models.dreamerv3.actor_critic import (
    PercentileNormalizer,
    ReplayContext,
    lambda_returns,
)
from worldflux.models.dreamerv3.optim import LaProp

VEC = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
IMG = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
DISC = gym.spaces.Discrete(3)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _model(obs=VEC, act=DISC, **overrides) -> DreamerV3:
    model = create_world_model("dreamerv3:debug", obs, act, seed=0, **overrides)
    assert isinstance(model, DreamerV3)
    return model


def _batch(B: int = 2, T: int = 5, obs=None, A: int = 3) -> Batch:
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    action = torch.nn.functional.one_hot(torch.randint(0, A, (B, T)), A).float()
    z = torch.zeros(B, T, dtype=torch.bool)
    return Batch(
        obs if obs is not None else torch.randn(B, T, 5),
        action,
        torch.randn(B, T),
        is_first,
        z,
        z.clone(),
    )


# --- state layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 5])
def test_state_keys_and_shapes(B: int) -> None:
    model = _model()
    cfg = model.config
    state = model.encode(torch.randn(B, 5))
    assert set(state.tensors) == {"deter", "stoch", "prior_logits", "posterior_logits"}
    state = model.update(state, torch.randint(0, 3, (B,)), torch.randn(B, 5))
    assert set(state.tensors) == {"deter", "stoch", "prior_logits", "posterior_logits"}
    assert state.tensors["stoch"].shape == (B, cfg.stoch, cfg.classes)
    assert torch.equal(state.tensors["stoch"].sum(-1), torch.ones(B, cfg.stoch))  # one-hot
    for key in ("prior_logits", "posterior_logits"):
        probs = state.tensors[key].exp()
        assert torch.allclose(probs.sum(-1), torch.ones(B, cfg.stoch), atol=1e-5)
        assert bool((probs >= cfg.unimix / cfg.classes - 1e-6).all())  # 1% unimix floor
    nxt = model.transition(state, torch.randint(0, 3, (B,)))
    assert set(nxt.tensors) == {"deter", "stoch", "prior_logits"}
    assert model.features(nxt).shape == (B, cfg.deter + cfg.stoch * cfg.classes)
    assert set(model.decode(nxt, heads=["reward"])) == {"reward"}


def test_is_first_resets_carry_inside_loss() -> None:
    model = _model()
    batch = _batch(B=3, T=6)
    batch.is_first[1, 3] = True  # a new episode in the middle of row 1
    post = model.observe(batch)
    zero = torch.zeros(1, model.config.deter)
    fresh = model.rssm.core(zero, torch.zeros(1, 128), torch.zeros(1, 3))
    assert torch.allclose(post["deter"][1, 3], fresh[0], atol=1e-6)
    assert torch.allclose(post["deter"][0, 0], fresh[0], atol=1e-6)
    assert not torch.allclose(post["deter"][0, 3], fresh[0], atol=1e-3)


def test_sequence_pass_equals_step_by_step_filtering() -> None:
    model = _model()
    batch = _batch(B=3, T=5)
    batch.is_first[2, 2] = True
    torch.manual_seed(3)
    post = model.observe(batch)
    torch.manual_seed(3)
    deter, stoch = model.rssm.initial(3)
    tokens = model.encoder({"obs": batch.obs})
    for t in range(5):
        keep = (~batch.is_first[:, t]).float().unsqueeze(-1)
        deter, stoch, logp = model.rssm.obs_step(
            deter * keep, stoch * keep, batch.action[:, t] * keep, tokens[:, t]
        )
        assert torch.allclose(post["deter"][:, t], deter, atol=1e-5)
        assert torch.allclose(post["post_logp"][:, t], logp, atol=1e-5)
        assert torch.equal(post["stoch"][:, t].flatten(1), stoch)


def test_truncation_is_not_termination() -> None:
    model = _model()
    batch = _batch()
    truncated = Batch(**{**batch.__dict__, "is_last": batch.is_last.clone()})
    truncated.is_last[:, -1] = True
    terminal = Batch(**{**truncated.__dict__, "is_terminal": truncated.is_last.clone()})
    losses = {}
    for name, b in (("plain", batch), ("truncated", truncated), ("terminal", terminal)):
        torch.manual_seed(0)
        losses[name] = model.loss(b)[1]["loss/con"]
    assert torch.equal(losses["plain"], losses["truncated"])
    assert not torch.equal(losses["plain"], losses["terminal"])


def test_images_and_dict_observations() -> None:
    space = gym.spaces.Dict({"image": IMG, "proprio": VEC})
    model = _model(space)
    obs = {
        "image": torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8),
        "proprio": torch.randn(2, 5),
    }
    preds = model.decode(model.encode(obs))
    assert preds["obs/image"].shape == (2, 64, 64, 3)
    assert bool(((preds["obs/image"] >= 0) & (preds["obs/image"] <= 1)).all())
    assert preds["obs/proprio"].shape == (2, 5)
    seq = {
        "image": torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8),
        "proprio": torch.randn(2, 3, 5),
    }
    loss, _ = model.loss(_batch(T=3, obs=seq))
    assert torch.isfinite(loss)


def test_strided_cnn_and_chw_images() -> None:
    chw = gym.spaces.Box(0, 255, (3, 32, 32), np.uint8)
    for strided in (False, True):
        model = _model(chw, cnn_strided=strided, cnn_mults=(2, 4))
        state = model.encode(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
        assert model.decode(state, heads=["obs"])["obs"].shape == (2, 3, 32, 32)
        assert model.encoder.out_dim == 2 * 4 * 8 * 8  # depth 2 * mult 4 channels at 8x8


def test_policy_actions() -> None:
    model = _model()
    state = model.encode(torch.randn(4, 5))
    action = model.policy(state)
    assert torch.equal(action.sum(-1), torch.ones(4)) and action.shape == (4, 3)
    cont = _model(act=CONT)
    a = cont.policy(cont.encode(torch.randn(4, 5)), sample=False)
    assert a.shape == (4, 2) and bool((a.abs() <= 1).all())


# --- errors ------------------------------------------------------------------------------------


def test_bad_inputs_raise_spec_errors() -> None:
    model = _model()
    with pytest.raises(SpecError, match="obs"):
        model.encode(torch.randn(2, 4))
    with pytest.raises(SpecError, match="action"):
        model.transition(model.encode(torch.randn(2, 5)), torch.randn(2, 4))
    img = _model(IMG)
    with pytest.raises(SpecError, match="uint8"):
        img.encode(torch.rand(2, 64, 64, 3))
    with pytest.raises(SpecError, match="batch.action"):
        model.loss(_batch(A=4))
    with pytest.raises(StateError, match="missing"):
        model.transition(State({"z": torch.zeros(2, 3)}), torch.randint(0, 3, (2,)))


def test_state_missing_or_misshapen_keys_raise_state_error() -> None:
    model = _model()
    state = model.encode(torch.randn(2, 5))
    no_prior = State({k: v for k, v in state.tensors.items() if k != "prior_logits"})
    with pytest.raises(StateError, match=r"missing \['prior_logits'\]; got \['deter', 'post"):
        model.rollout(no_prior, actions=torch.randint(0, 3, (2, 4)))
    no_deter = State({k: v for k, v in state.tensors.items() if k != "deter"})
    for call in (
        lambda: model.transition(no_deter, torch.randint(0, 3, (2,))),
        lambda: model.update(no_deter, torch.randint(0, 3, (2,)), torch.randn(2, 5)),
        lambda: model.rollout(no_deter, actions=torch.randint(0, 3, (2, 4))),
        lambda: model.features(no_deter),
    ):
        with pytest.raises(StateError, match=r"missing \['deter'\]"):
            call()
    wrong = State({**state.tensors, "deter": torch.zeros(2, 7)})
    with pytest.raises(StateError, match=r"'deter' \(B, \d+\).* got \(2, 7\)"):
        model.transition(wrong, torch.randint(0, 3, (2,)))


def test_bad_config_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="deter"):
        DreamerV3Config(deter=100, blocks=8)
    with pytest.raises(ConfigError, match="actor_grad_cont"):
        DreamerV3Config(actor_grad_cont="backprop")
    with pytest.raises(ConfigError, match="unimix"):
        DreamerV3Config(unimix=1.5)


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("size")])
def test_preset_parameter_count(preset: str) -> None:
    """Reference setting: 64x64x3 images, 18 discrete actions (Atari), everything counted
    (world model, actor, critic, slow critic). size1m is the exception: the official size1m
    widths give 0.75M here, so it gets a wider band (README.md, "Sizes")."""
    n = count_parameters(f"dreamerv3:{preset}", IMG, gym.spaces.Discrete(18))
    nominal = float(preset[4:-1]) * 1e6
    tol = 0.30 if preset == "size1m" else 0.15
    assert abs(n - nominal) <= tol * nominal, f"{preset}: {n / 1e6:.2f}M"


# --- ingredients -------------------------------------------------------------------------------


def test_lambda_returns_by_hand() -> None:
    rew = torch.tensor([[0.0, 1.0, 2.0]])
    live = torch.tensor([[0.9, 0.9, 0.5]])
    val = torch.tensor([[10.0, 20.0, 30.0]])
    lam = 0.5
    r1 = 2.0 + 0.5 * 30.0  # R_1 = r_2 + live_2 * v_2 (the last step bootstraps fully)
    r0 = 1.0 + 0.9 * ((1 - lam) * 20.0 + lam * r1)
    assert torch.allclose(lambda_returns(rew, live, val, lam), torch.tensor([[r0, r1]]))
    # lam = 1 is the discounted Monte-Carlo return with a terminal bootstrap
    mc = lambda_returns(rew, live, val, 1.0)
    assert mc[0, 0].item() == pytest.approx(1.0 + 0.9 * (2.0 + 0.5 * 30.0))


def test_replay_lambda_returns_cut_at_episode_end() -> None:
    rew = torch.tensor([[0.0, 1.0, 2.0]])
    term = torch.tensor([[False, False, True]])
    boot = torch.tensor([[5.0, 6.0, 7.0]])
    g, lam = 0.99, 0.9
    live = (~term).float() * g
    ret = lambda_returns(rew, live, boot, (~term).float() * lam)  # is_last == is_terminal here
    # R_1 = r_2 (terminal: nothing after it); R_0 = r_1 + g * ((1 - lam) * v_1 + lam * R_1)
    assert torch.allclose(ret, torch.tensor([[1.0 + g * ((1 - lam) * 6.0 + lam * 2.0), 2.0]]))


def test_update_with_replay_critic_loss() -> None:
    model = _model(repval_scale=0.3)
    agent = DreamerAgent(model, batch_size=2, seq_len=5)
    batch = _batch()
    batch.is_last[:, -1] = True
    _, _, post = model.world_model_loss(batch)
    start = State({k: v.detach().flatten(0, 1) for k, v in post.tensors.items()})
    replay = ReplayContext(
        model.features(post).detach(), batch.reward, batch.is_terminal, batch.is_last
    )
    ac = model.actor_critic
    torch.manual_seed(0)
    _, with_replay, _ = ac.imagine_loss(model, start, replay)
    torch.manual_seed(0)
    _, without, _ = ac.imagine_loss(model, start)
    assert float(with_replay.detach()) > float(without.detach())  # an extra positive CE term
    metrics = agent.update(batch)
    assert math.isfinite(metrics["ac/critic_loss"]) and metrics["nonfinite"] == 0.0


def test_percentile_normalizer() -> None:
    norm = PercentileNormalizer(rate=0.5, limit=1.0, low=5.0, high=95.0)
    x = torch.arange(101, dtype=torch.float32)  # P5 = 5, P95 = 95
    norm.update(x)
    assert norm.lo.item() == pytest.approx(2.5) and norm.hi.item() == pytest.approx(47.5)
    assert norm.scale().item() == pytest.approx(45.0)
    for _ in range(40):
        norm.update(x)
    assert norm.scale().item() == pytest.approx(90.0, rel=1e-4)
    small = PercentileNormalizer(rate=1.0, limit=1.0, low=5.0, high=95.0)
    small.update(torch.linspace(0, 0.1, 11))
    assert small.scale().item() == 1.0  # max(1, S)


# --- actor-critic isolation ----------------------------------------------------------------------


@pytest.mark.parametrize("act,mode", [(DISC, "reinforce"), (CONT, "reinforce"), (CONT, "dynamics")])
def test_actor_critic_never_touches_world_model(act, mode) -> None:
    model = _model(act=act, actor_grad_cont=mode)
    A = model.action_spec.dim
    batch = (
        _batch(A=A)
        if act is DISC
        else Batch(
            torch.randn(2, 5, 5),
            torch.rand(2, 5, A) * 2 - 1,
            torch.randn(2, 5),
            *(_batch().is_first, _batch().is_terminal, _batch().is_last),
        )
    )
    _, _, post = model.world_model_loss(batch)
    start = State({k: v.detach().flatten(0, 1) for k, v in post.tensors.items()})
    before = [p.detach().clone() for p in model.world_model_parameters()]
    opt = make_optimizers(model)
    model.zero_grad(set_to_none=True)
    ok, metrics = actor_critic_step(model.actor_critic, model, start, opt.actor, opt.critic)
    assert ok
    assert all(p.grad is None for p in model.world_model_parameters())
    for p, q in zip(before, model.world_model_parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(p.grad is not None for p in model.actor_critic.actor.parameters())
    assert float(metrics["ac/actor_grad_norm"]) > 0
    slow, fast = model.actor_critic.slow_critic, model.actor_critic.critic
    assert all(not p.requires_grad for p in slow.parameters())
    assert any(
        not torch.equal(s, f) for s, f in zip(slow.parameters(), fast.parameters(), strict=True)
    )


def test_laprop_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.1, -0.2])
    opt = LaProp([p], lr=0.1, warmup=0)
    opt.step()  # first step: bias-corrected RMS makes the update lr * sign(g)
    assert torch.allclose(p.detach(), torch.tensor([0.9, -1.9]))
    clipped = LaProp._agc(torch.tensor([1.0, 0.0]), torch.tensor([30.0, 40.0]), 0.3, 1e-3)
    assert torch.allclose(clipped, torch.tensor([0.18, 0.24]))  # norm 50 -> 0.3 * ||p|| = 0.3
    small = torch.tensor([0.01, 0.0])
    assert torch.equal(LaProp._agc(torch.tensor([1.0, 0.0]), small, 0.3, 1e-3), small)
    warm = torch.nn.Parameter(torch.tensor([1.0]))
    warm.grad = torch.tensor([1.0])
    LaProp([warm], lr=0.1, warmup=10).step()
    assert warm.item() == pytest.approx(1.0 - 0.1 / 10)


def test_update_with_laprop() -> None:
    model = _model(optimizer="laprop", warmup=0)
    agent = DreamerAgent(model, batch_size=2, seq_len=5)
    assert all(isinstance(o, LaProp) for o in agent.optimizers().values())
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    metrics = agent.update(_batch())
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["nonfinite"] == 0.0
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_resume_from_safetensors_continues_identically() -> None:
    import copy

    from safetensors.torch import load, save

    a = _model(act=CONT)
    agent_a = DreamerAgent(a, batch_size=2, seq_len=5)
    batch = Batch(torch.randn(2, 5, 5), torch.rand(2, 5, 2) * 2 - 1, torch.randn(2, 5),
                  *(_batch().is_first, _batch().is_terminal, _batch().is_last))  # fmt: skip
    agent_a.update(batch)
    blob = save({k: v.contiguous() for k, v in a.state_dict().items()})
    opt_states = {k: copy.deepcopy(o.state_dict()) for k, o in agent_a.optimizers().items()}
    rng = torch.get_rng_state()
    agent_a.update(batch)
    b = create_world_model("dreamerv3:debug", VEC, CONT, seed=1)
    assert isinstance(b, DreamerV3)
    agent_b = DreamerAgent(b, batch_size=2, seq_len=5)
    b.load_state_dict(load(blob))
    for k, o in agent_b.optimizers().items():
        o.load_state_dict(opt_states[k])
    torch.set_rng_state(rng)
    agent_b.update(batch)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name  # weights, slow critic and return-normaliser buffers
