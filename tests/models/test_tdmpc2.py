"""TD-MPC2: contract, components, presets, spaces."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from torch import nn

from worldflux.core.exceptions import ConfigError, SpecError, StateError
from worldflux.core.registry import count_parameters, create_world_model
from worldflux.core.state import State
from worldflux.models.tdmpc2 import PRESETS, TDMPC2, TDMPC2Config
from worldflux.nn.ensemble import EnsembleMLP
from worldflux.nn.functional import symexp, symlog, two_hot
from worldflux.planners import MPPI
from worldflux.planners.base import PlanningModel

OBS = gym.spaces.Box(-1, 1, (7,))
ACT = gym.spaces.Box(-1, 1, (3,))


def debug(**kw) -> TDMPC2:
    m = create_world_model("tdmpc2:debug", OBS, ACT, seed=0, **kw)
    assert isinstance(m, TDMPC2)
    return m


def reward_of(m: TDMPC2, s: State, a: torch.Tensor) -> torch.Tensor:
    """r(z, a) straight from the latent maths. -> (B,)."""
    return m.to_scalar(m.reward_logits(m.features(s), a))


@pytest.mark.parametrize("b", [1, 3, 5])
def test_contract_shapes(b: int) -> None:
    m = debug()
    lat = m.config.latent_dim
    s = m.encode(torch.randn(b, 7))
    assert set(s.tensors) == {"latent"} and s.tensors["latent"].shape == (b, lat)
    a = torch.rand(b, 3) * 2 - 1
    assert m.transition(s, a).tensors["latent"].shape == (b, lat)
    assert m.update(s, a, torch.randn(b, 7)).tensors["latent"].shape == (b, lat)
    assert m.initial_state(b).tensors["latent"].shape == (b, lat)
    assert m.features(s).shape == (b, lat)
    out = m.decode(s)
    assert set(out) == {"reward", "q", "action", "continue"}
    assert out["reward"].shape == out["q"].shape == out["continue"].shape == (b,)
    assert out["action"].shape == (b, 3)
    traj = m.rollout(s, actions=torch.rand(b, 4, 3) * 2 - 1)
    assert traj.states.tensors["latent"].shape == (b, 5, lat)
    assert traj.rewards is not None and traj.rewards.shape == (b, 4)
    traj = m.rollout(s, policy=m.policy, horizon=2)
    assert traj.actions.shape == (b, 2, 3)
    assert m.q(m.features(s), a, reduce="per_member").shape == (m.config.num_q, b)
    assert m.value(s, a).shape == m.policy(s).shape[:1] == (b,)


def test_rollout_reward_is_reward_of_the_action_taken() -> None:
    m = debug()
    torch.nn.init.normal_(m.reward_net[-1].weight)  # zero-initialised otherwise
    s = m.encode(torch.randn(2, 7))
    acts = torch.rand(2, 3, 3) * 2 - 1
    traj = m.rollout(s, actions=acts)
    assert torch.allclose(traj.rewards[:, 0], reward_of(m, s, acts[:, 0]))
    s1 = m.transition(s, acts[:, 0])
    assert torch.allclose(traj.rewards[:, 1], reward_of(m, s1, acts[:, 1]))
    # decode evaluates reward at the given action, else at the policy's mean action
    assert torch.allclose(m.decode(s, ["reward"], action=acts[:, 0])["reward"], traj.rewards[:, 0])
    mean = m.policy(s, sample=False)
    assert torch.allclose(m.decode(s, ["reward"])["reward"], reward_of(m, s, mean))


def test_simnorm_groups_sum_to_one() -> None:
    m = debug()
    s = m.encode(torch.randn(4, 7))
    s2 = m.transition(s, torch.zeros(4, 3))
    for z in (s.tensors["latent"], s2.tensors["latent"], m.initial_state(4).tensors["latent"]):
        groups = z.reshape(4, -1, 8)  # (B, L) -> (B, L/8, 8)
        assert torch.allclose(groups.sum(-1), torch.ones(4, z.shape[1] // 8), atol=1e-5)
        assert bool((z >= 0).all())


def test_two_hot_round_trip_on_101_bins() -> None:
    cfg = TDMPC2Config()
    bins = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins)
    assert bins.numel() == 101 and torch.isclose(bins[1] - bins[0], torch.tensor(0.2))
    x = torch.cat([torch.linspace(-5000, 5000, 301), torch.tensor([0.0, 0.37, -1.9, 123.4])])
    enc = two_hot(symlog(x), bins)  # (N, 101)
    assert torch.allclose(enc.sum(-1), torch.ones(len(x)))
    assert int((enc > 0).sum(-1).max()) <= 2
    back = symexp((enc * bins).sum(-1))
    assert torch.allclose(back, x, rtol=1e-4, atol=1e-4)
    # through the model's decoding: logits = log two-hot -> softmax -> expectation -> symexp
    m = create_world_model("tdmpc2:1m", OBS, ACT, seed=0)
    assert torch.allclose(m.to_scalar(enc.clamp_min(1e-30).log()), x, rtol=1e-3, atol=1e-3)


def test_ensemble_call_equals_member_by_member() -> None:
    torch.manual_seed(1)
    ens = EnsembleMLP(4, 6, [16, 16], 5, act="mish", dropout=0.01).eval()
    for p in ens.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 7, 6)
    out = ens(x)
    assert out.shape == (4, 2, 7, 5)
    for e in range(4):
        h = x
        for i in range(2):
            h = h @ ens.member_weight(i, e) + getattr(ens, f"b{i}")[e]
            h = nn.functional.layer_norm(h, (16,))
            h = nn.functional.mish(h * getattr(ens, f"g{i}")[e] + getattr(ens, f"s{i}")[e])
        ref = h @ ens.member_weight(2, e) + ens.b2[e]
        assert torch.allclose(out[e], ref, atol=1e-5)
    sub = ens(x, members=torch.tensor([3, 1]))
    assert torch.allclose(sub, out[[3, 1]], atol=1e-6)
    # dropout draws independent masks per member in training mode
    ens.train()
    ens.dropout = 0.5
    y = ens(torch.ones(1, 6))
    assert not torch.allclose(y[0], y[1])


def test_presets_widths_and_param_counts() -> None:
    widths = {  # encoder / MLP / latent / encoder layers / Qs, published
        "1m": (256, 384, 128, 2, 2),
        "5m": (256, 512, 512, 2, 5),
        "19m": (1024, 1024, 768, 3, 5),
        "48m": (1792, 1792, 768, 4, 5),
        "317m": (4096, 4096, 1376, 5, 8),
    }
    obs, act = gym.spaces.Box(-1, 1, (24,)), gym.spaces.Box(-1, 1, (6,))  # reference: walker
    for name, w in widths.items():
        c = PRESETS[name]
        assert (c.enc_dim, c.mlp_dim, c.latent_dim, c.num_enc_layers, c.num_q) == w
        n = count_parameters(f"tdmpc2:{name}", obs, act)
        nominal = int(name[:-1]) * 1_000_000
        if name == "1m":  # the published widths give 1.21M (documented in the README)
            assert 1.15e6 < n < 1.25e6
        else:
            assert abs(n - nominal) / nominal < 0.15, (name, n)


def test_discount_heuristic() -> None:
    assert TDMPC2Config(episode_length=1000).discount == pytest.approx(0.995)
    assert TDMPC2Config(episode_length=500).discount == pytest.approx(0.99)
    assert TDMPC2Config(episode_length=50).discount == pytest.approx(0.95)
    assert TDMPC2Config(discount_override=0.9).discount == 0.9


def test_discrete_actions_supported() -> None:
    m = create_world_model("tdmpc2:debug", OBS, gym.spaces.Discrete(4), seed=0)
    s = m.encode(torch.randn(3, 7))
    a = m.policy(s)
    assert a.shape == (3, 4) and torch.equal(a.sum(-1), torch.ones(3))
    assert m.transition(s, torch.tensor([0, 3, 1])).tensors["latent"].shape == (3, 16)
    act = MPPI.from_config(m.config).plan(m, s, explore=False)
    assert act.shape == (3, 4) and torch.equal(act.sum(-1), torch.ones(3))


def test_pixel_encoder_and_shift_augmentation() -> None:
    img = gym.spaces.Box(0, 255, (64, 64, 3), dtype="uint8")
    m = create_world_model("tdmpc2:debug", img, ACT, seed=0)
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    m.eval()
    z1, z2 = m.encode(x).tensors["latent"], m.encode(x).tensors["latent"]
    assert z1.shape == (2, 16) and torch.equal(z1, z2)  # no augmentation in eval
    m.train()
    zs = [m.encode(x).tensors["latent"] for _ in range(4)]
    assert any(not torch.equal(zs[0], z) for z in zs[1:])  # random shifts in training
    with pytest.raises(SpecError, match="64x64"):
        create_world_model("tdmpc2:debug", gym.spaces.Box(0, 255, (32, 32, 3), "uint8"), ACT)


def test_same_seed_same_model() -> None:
    a, b = debug(), debug()
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na


def test_bad_inputs_raise_clear_errors() -> None:
    m = debug()
    with pytest.raises(StateError, match="latent"):
        m.transition(State({"h": torch.zeros(2, 16)}), torch.zeros(2, 3))
    with pytest.raises(SpecError, match="action"):
        m.transition(m.initial_state(2), torch.zeros(2, 4))
    z = m.features(m.initial_state(2))
    for bad in ("max", "avg", "min", "mean", "all"):  # the old, ambiguous names are gone too
        with pytest.raises(SpecError, match="reduce: expected one of"):
            m.q(z, torch.zeros(2, 3), reduce=bad)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="obs"):
        m.encode(torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="latent_dim"):
        TDMPC2Config(latent_dim=12)
    with pytest.raises(ConfigError, match="num_q"):
        TDMPC2Config(num_q=1)
    with pytest.raises(ConfigError, match="num_elites"):
        TDMPC2Config(num_samples=8, num_elites=16, num_pi_trajs=2)


def test_mppi_plans_with_the_model_batched() -> None:
    m = debug().eval()
    s = m.encode(torch.randn(3, 7))
    planner = MPPI.from_config(m.config, generator=torch.Generator().manual_seed(0))
    a = planner.plan(m, s, explore=True)
    assert a.shape == (3, 3) and bool((a.abs() <= 1).all())
    assert planner.last_mean is not None and planner.last_mean.shape == (3, 3, 3)


def test_sparse_dropout_matches_bernoulli_statistics() -> None:
    from worldflux.nn.ensemble import _dropout

    x = torch.ones(400_000, requires_grad=True)
    y = _dropout(x, 0.01, True)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.01) < 0.0015  # ~6 sigma
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / 0.99))
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    d = _dropout(torch.ones(400_000), 0.05, True) == 0  # neighbours independent
    assert abs((d[1:] & d[:-1]).float().mean().item() - 0.0025) < 0.0008
    assert torch.equal(_dropout(x, 0.01, False), x)


def test_fast_mish_matches_torch() -> None:
    from worldflux.nn.ensemble import mish

    x = torch.cat([torch.randn(1000) * 6, torch.tensor([-1e4, -90.0, 0.0, 50.0, 90.0, 1e4])])
    x.requires_grad_(True)
    y = mish(x)
    ref = torch.nn.functional.mish(x)
    assert torch.allclose(y, ref, atol=2e-6)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(g, g_ref, atol=2e-6)  # float32 cancellation for x << 0


def test_dict_observations() -> None:
    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (3,)), "b": gym.spaces.Box(-1, 1, (4,))})
    m = create_world_model("tdmpc2:debug", space, ACT, seed=0)
    s = m.encode({"a": torch.randn(2, 3), "b": torch.randn(2, 4)})
    assert s.tensors["latent"].shape == (2, 16)
    with pytest.raises(SpecError, match="missing"):
        m.encode({"a": torch.randn(2, 3)})
    mixed = gym.spaces.Dict(
        {"img": gym.spaces.Box(0, 255, (64, 64, 3), "uint8"), "b": gym.spaces.Box(-1, 1, (4,))}
    )
    m = create_world_model("tdmpc2:debug", mixed, ACT, seed=0)
    img = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    m.eval()
    z = m.encode({"img": img, "b": torch.zeros(2, 4)}).tensors["latent"]
    assert z.shape == (2, 16) and torch.allclose(z.reshape(2, 2, 8).sum(-1), torch.ones(2, 2))
    z_b = m.encode({"img": img, "b": torch.ones(2, 4)}).tensors["latent"]
    z_img = m.encode({"img": 255 - img, "b": torch.zeros(2, 4)}).tensors["latent"]
    assert not torch.allclose(z, z_b) and not torch.allclose(z, z_img)  # both fields count
    small = gym.spaces.Dict(
        {"img": gym.spaces.Box(0, 255, (32, 32, 3), "uint8"), "b": gym.spaces.Box(-1, 1, (4,))}
    )
    with pytest.raises(SpecError, match=r"obs_space\['img'\].*expects 64x64, got 32x32"):
        create_world_model("tdmpc2:debug", small, ACT)


def test_family_readme_example_runs() -> None:
    import re
    from pathlib import Path

    import worldflux.models.tdmpc2 as pkg

    text = (Path(pkg.__file__).parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "tdmpc2/README.md", "exec"), {})


def test_two_of_many_q_members() -> None:
    m = debug(num_q=4).eval()
    s = m.encode(torch.randn(3, 7))
    a = torch.rand(3, 3) * 2 - 1
    for p in m.qs.parameters():  # break the zero init so members differ
        torch.nn.init.normal_(p, std=0.3)
    z = m.features(s)
    all_q = m.q(z, a, reduce="per_member")  # (4, 3)
    two = (
        ("mean_of_two_random", lambda q: q.mean(0)),
        ("min_of_two_random", lambda q: q.min(0).values),
    )
    for reduce, fn in two:
        out = m.q(z, a, reduce=reduce)
        pairs = [fn(all_q[[i, j]]) for i in range(4) for j in range(i + 1, 4)]
        assert any(torch.allclose(out, p, atol=1e-6) for p in pairs), reduce
    assert torch.allclose(m.q(z, a, reduce="mean_of_all"), all_q.mean(0), atol=1e-6)


def test_decode_q_is_deterministic_in_train_mode() -> None:
    m = debug(dropout=0.5).train()  # a large dropout: any use of it would show
    for p in m.qs.parameters():
        torch.nn.init.normal_(p, std=0.3)  # the last layer is zero-initialised otherwise
    s = m.encode(torch.randn(4, 7))
    a = torch.rand(4, 3) * 2 - 1
    q1, q2 = m.decode(s, ["q"], action=a)["q"], m.decode(s, ["q"], action=a)["q"]
    assert torch.equal(q1, q2)
    assert torch.equal(q1, m.eval().decode(s, ["q"], action=a)["q"])
    m.train()
    assert not torch.equal(m.q(m.features(s), a, reduce="mean_of_all"), q1)  # dropout is live


def test_update_checks_obs_batch_against_the_state() -> None:
    m = debug()
    s = m.encode(torch.randn(2, 7))
    with pytest.raises(SpecError, match="obs: expected batch size 2"):
        m.update(s, torch.zeros(2, 3), torch.randn(3, 7))  # used to return a batch-3 State


def test_one_method_per_concept_and_the_planning_protocol() -> None:
    """The latent maths has one name per component; the State adapter is what MPPI needs."""
    m = debug()
    assert isinstance(m, PlanningModel)
    for name in ("embed", "next_latent", "reward_logits", "termination_logit", "pi", "q_logits",
                 "q", "update_target"):  # fmt: skip
        assert callable(getattr(m, name)), name
    for alias in ("encode_obs", "q_values", "reward", "train_step", "policy_loss",
                  "soft_update_targets", "_optims"):  # fmt: skip
        assert not hasattr(m, alias), alias
