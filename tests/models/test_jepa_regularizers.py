"""SIGReg / Epps-Pulley, VICReg and effective rank on data whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from worldflux.core.exceptions import SpecError
from worldflux.models.jepa.regularizers import effective_rank, epps_pulley, sigreg, vicreg


def test_epps_pulley_expectation_for_gaussian_samples() -> None:
    # E[EP] = integral (1 - exp(-t^2)) exp(-t^2/2) dt = sqrt(2 pi) - sqrt(2 pi / 3) ~ 1.06
    x = torch.randn(512, 256, dtype=torch.float64)
    expected = math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3)
    assert float(epps_pulley(x).mean()) == pytest.approx(expected, rel=0.15)


def test_epps_pulley_of_a_point_mass_grows_with_n() -> None:
    # all samples at 0: EP = N * integral (1 - e^{-t^2/2})^2 e^{-t^2/2} dt
    #                     = N * (sqrt(2 pi) - 2 sqrt(pi) + sqrt(2 pi / 3)) ~ 0.409 N
    per_sample = math.sqrt(2 * math.pi) - 2 * math.sqrt(math.pi) + math.sqrt(2 * math.pi / 3)
    for n in (64, 512):
        stat = float(epps_pulley(torch.zeros(n, 1)).mean())
        assert stat == pytest.approx(per_sample * n, rel=0.02)


def test_sigreg_near_zero_for_gaussian_large_for_collapsed() -> None:
    n, d = 1024, 32
    gauss = sigreg(torch.randn(n, d), projections=128)
    collapsed = sigreg(torch.randn(n, 1) @ torch.randn(1, d) * 0.01, projections=128)
    rank_one = sigreg(torch.randn(n, 1).expand(n, d).contiguous(), projections=128)
    shifted = sigreg(torch.randn(n, d) + 3.0, projections=128)
    assert float(gauss) < 2.0  # O(1) whatever N
    for bad in (collapsed, rank_one, shifted):
        assert float(bad) > 50 * float(gauss)


def test_sigreg_gradient_moves_towards_gaussian() -> None:
    z = (torch.randn(256, 8) * 0.3 + 1.0).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    start = float(sigreg(z.detach(), 64, generator=gen))
    for _ in range(100):
        loss = sigreg(z, 64, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(sigreg(z.detach(), 64, generator=gen)) < 0.2 * start


def test_vicreg_low_for_isotropic_high_for_collapsed() -> None:
    iso = vicreg(torch.randn(2048, 16))
    collapsed = vicreg(torch.randn(2048, 1).expand(2048, 16) * 0.05)
    assert float(iso) < 0.5 and float(collapsed) > 10.0


def test_effective_rank_bounds() -> None:
    assert float(effective_rank(torch.randn(4096, 16))) > 14.0
    assert float(effective_rank(torch.randn(512, 1) @ torch.randn(1, 16))) < 1.01
    two = torch.cat([torch.randn(512, 2), torch.zeros(512, 14)], 1)
    assert 1.8 < float(effective_rank(two)) < 2.01


def test_bad_shapes_raise() -> None:
    with pytest.raises(SpecError, match="x"):
        epps_pulley(torch.zeros(5))
    with pytest.raises(SpecError, match="z"):
        sigreg(torch.zeros(2, 3, 4), 8)
