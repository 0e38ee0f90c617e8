"""DreamerV3's ingredients against hand-computed values: symlog, two-hot bins, unimix, the block
linear layer, fused input MLPs, free bits."""

from __future__ import annotations

import math

import pytest
import torch
from test_dreamerv3 import _model

from worldflux.models.dreamerv3.networks import shared_input_mlps
from worldflux.nn.blocks import BlockLinear, ChannelNorm
from worldflux.nn.distributions import sample_onehot, symexp_bins, symmetric_mean, unimix_logp
from worldflux.nn.functional import symexp, symlog, two_hot, unimix


def test_symlog_symexp_inverse() -> None:
    x = torch.tensor([-1e6, -3.0, -0.5, 0.0, 0.5, 3.0, 1e6], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)


def test_two_hot_round_trip_on_symexp_bins() -> None:
    bins = symexp_bins(255)
    assert bins[127] == 0 and bins[-1] == pytest.approx(math.expm1(20.0), rel=1e-6)
    x = torch.tensor([-1234.5, -1.0, 0.0, 0.3, 7.0, 1e5])
    enc = two_hot(x, bins)
    assert torch.allclose(enc.sum(-1), torch.ones(6))
    assert int((enc > 0).sum(-1).max()) <= 2
    assert torch.allclose(symmetric_mean(enc, bins), x, rtol=1e-5)
    # hand-computed: 0.3 lies between bins[128]=symexp(20/127) and bins[129]=symexp(40/127)
    lo, hi = math.expm1(20 / 127), math.expm1(40 / 127)
    assert enc[3, 129].item() == pytest.approx((0.3 - lo) / (hi - lo), rel=1e-5)
    uniform = torch.full((255,), 1 / 255)
    assert symmetric_mean(uniform, bins).item() == 0.0  # exact, no float noise


def test_unimix_mixing() -> None:
    logp = unimix(torch.tensor([math.log(3.0), 0.0, 0.0, -math.inf]), 0.01)
    expected = 0.99 * torch.tensor([0.6, 0.2, 0.2, 0.0]) + 0.01 / 4
    assert torch.allclose(logp.exp(), expected, atol=1e-7)
    x = torch.randn(6, 32, 5)
    assert torch.allclose(unimix_logp(x, 0.01), unimix(x, 0.01), atol=1e-6)
    draws = sample_onehot(logp.expand(40000, 4))
    assert torch.equal(draws.sum(-1), torch.ones(40000))
    draws = draws.mean(0)
    assert torch.allclose(draws, expected, atol=0.01)


def test_block_linear_is_block_diagonal() -> None:
    layer = BlockLinear(8, 12, groups=4)
    dense = torch.block_diag(*layer.weight.detach())  # (4 blocks of 2x3) -> (8, 12)
    x = torch.randn(5, 8)
    assert torch.allclose(layer(x), x @ dense + layer.bias, atol=1e-6)
    norm, img = ChannelNorm(4, "rms"), torch.randn(2, 4, 3, 3)
    by_hand = img * torch.rsqrt(img.pow(2).mean(1, keepdim=True) + 1e-5)
    assert torch.allclose(norm(img.contiguous(memory_format=torch.channels_last)), by_hand)
    core_gru = _model().rssm  # the core's group-major path equals the flat formula
    d, s, a = torch.randn(3, 64), torch.zeros(3, 128), torch.rand(3, 3) * 2 - 1  # |a| <= 1
    r = core_gru
    xs = [r.act(n(lin(v))) for lin, n, v in zip(r.inputs, r.input_norms, (d, s, a), strict=True)]
    h = r.act(r.hid_norm(r.hid_deter(d) + r.hid_x(torch.cat(xs, -1))))
    g = r.gru(h).view(3, 4, 3, 16)  # (N, 3D) -> (N, G, [r, c, u], D/G)
    reset, cand, upd = (g[:, :, i].reshape(3, 64) for i in range(3))
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    upd = torch.sigmoid(upd - 1)
    assert torch.allclose(r.core(d, s, a), upd * cand + (1 - upd) * d, atol=1e-5)


def test_shared_input_mlps_equal_separate_heads() -> None:
    model = _model()
    feat = torch.randn(4, 3, model.feat_dim)
    nets = (model.reward_head.net, model.continue_head.net, model.actor_critic.critic.net)
    for fused, net in zip(shared_input_mlps(feat, nets), nets, strict=True):
        assert torch.allclose(fused, net(feat), atol=1e-6)


def test_free_bits_clip_each_term() -> None:
    model = _model()
    rssm = model.rssm
    logits = torch.zeros(2, 32, 4, requires_grad=True)
    same = rssm.kl_losses(torch.log_softmax(logits, -1), torch.log_softmax(logits, -1))
    assert torch.equal(same["dyn"], torch.ones(2)) and torch.equal(same["rep"], torch.ones(2))
    (same["dyn"] + same["rep"]).sum().backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
    post = torch.log_softmax(torch.tensor([4.0, 0.0, 0.0, 0.0]).expand(2, 32, 4), -1)
    prior = torch.log_softmax(torch.zeros(2, 32, 4), -1)
    kl = rssm.kl_losses(post, prior)
    p = torch.softmax(torch.tensor([4.0, 0.0, 0.0, 0.0]), -1)
    per = float((p * (p.log() + math.log(4))).sum())  # KL(p || uniform) of one latent
    assert kl["dyn"][0].item() == pytest.approx(32 * per, rel=1e-5)  # 32 * 0.8245 > 1 nat
