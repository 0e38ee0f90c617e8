"""TD-MPC2 speed: our kernels vs stock PyTorch kernels, same model, same run, one thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tdmpc2_ablation.py [--iters N]``.

"stock" swaps back, by monkeypatching this process only: ``F.mish`` for the closed-form Mish,
``softmax(-1)`` over groups of 8 for the strided SimNorm, ``F.dropout`` for the sparse dropout,
the per-tensor Adam for the fused one, and evaluates all Q members before picking two (as
upstream does) instead of only the two used. The two variants alternate, so machine load hits
both alike; CPU (process) time medians are reported next to wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import worldflux.models.tdmpc2.model as tdmodel  # noqa: E402
import worldflux.models.tdmpc2.networks as tdnet  # noqa: E402
import worldflux.nn.ensemble as ens  # noqa: E402
from worldflux.agents.tdmpc2 import TDMPC2Agent  # noqa: E402
from worldflux.core.batch import Batch  # noqa: E402
from worldflux.core.registry import create_world_model  # noqa: E402
from worldflux.planners import MPPI  # noqa: E402


@contextmanager
def stock_kernels(model: tdmodel.TDMPC2) -> Iterator[None]:
    """Temporarily use stock kernels and all-member Q evaluation (see the module docstring)."""
    acts = [m for m in model.modules() if isinstance(m, tdnet.NormedLinear)]
    saved = (ens._ACTS["mish"], ens._dropout, tdnet.SimNorm.forward)
    saved_acts = [m.act for m in acts]
    ens._ACTS["mish"] = F.mish
    ens._dropout = lambda x, p, training: F.dropout(x, p, training)  # type: ignore[assignment]
    tdnet.SimNorm.forward = (
        lambda self, x: F.softmax(  # type: ignore[method-assign]
            x.reshape(*x.shape[:-1], -1, self.group), -1
        ).reshape(x.shape)
    )
    for m in acts:
        if isinstance(m.act, ens.Mish):
            m.act = torch.nn.Mish()
    try:
        yield
    finally:
        ens._ACTS["mish"], ens._dropout, tdnet.SimNorm.forward = saved
        for m, a in zip(acts, saved_acts, strict=True):
            m.act = a


def _stock_q(model: tdmodel.TDMPC2) -> Callable[..., torch.Tensor]:
    """`q` that computes every member, then reduces over 2 random ones (upstream)."""
    original = tdmodel.TDMPC2.q

    def q(z, a, *, reduce, target=False, detach=False, dropout=None):  # type: ignore[no-untyped-def]
        kw = dict(target=target, detach=detach, dropout=dropout)
        if reduce not in ("min_of_two_random", "mean_of_two_random"):
            return original(model, z, a, reduce=reduce, **kw)
        q_all = original(model, z, a, reduce="per_member", **kw)  # (E, ...)
        pick = q_all[torch.randperm(model.config.num_q, device=q_all.device)[:2]]
        return pick.mean(0) if reduce == "mean_of_two_random" else pick.min(0).values

    return q


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def compare(preset: str, iters: int) -> None:
    """Alternate ours/stock `iters` times (after one warm-up round); print medians."""
    vec = gym.spaces.Box(-np.inf, np.inf, (24,), np.float32)
    cont = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    model = create_world_model(f"tdmpc2:{preset}", vec, cont, seed=0)
    assert isinstance(model, tdmodel.TDMPC2)
    g = torch.Generator().manual_seed(0)
    no = torch.zeros(256, 4, dtype=torch.bool)
    batch = Batch(torch.randn(256, 4, 24, generator=g), torch.rand(256, 4, 6, generator=g),
                  torch.randn(256, 4, generator=g), no, no, no)  # fmt: skip
    agent = TDMPC2Agent(model, batch_size=256)
    fast_opt = (agent.optim, agent.pi_optim)
    slow_opt = tuple(  # same groups, lr and eps, per-tensor (non-fused) Adam
        torch.optim.Adam(
            [{"params": g["params"], "lr": g["lr"], "eps": g["eps"]} for g in o.param_groups],
            foreach=False,
        )
        for o in fast_opt
    )
    planner = MPPI.from_config(model.config)
    state = model.encode(torch.randn(1, 24))
    stock_q = _stock_q(model)
    res: dict[str, list[tuple[float, float]]] = {}
    for i in range(iters + 1):
        for variant in ("ours", "stock"):
            agent.optim, agent.pi_optim = fast_opt if variant == "ours" else slow_opt
            if variant == "stock":
                model.q = stock_q  # type: ignore[method-assign]
            with stock_kernels(model) if variant == "stock" else _null():
                model.train()
                t_upd = _time(lambda: agent.update(batch))
                model.eval()
                t_plan = _time(lambda: planner.plan(model, state, explore=True))
            if variant == "stock":
                del model.q
            if i > 0:  # the first round warms up
                res.setdefault(f"{variant} update", []).append(t_upd)
                res.setdefault(f"{variant} plan", []).append(t_plan)
    for what in ("update", "plan"):
        ow, oc = (statistics.median(x) * 1e3 for x in zip(*res[f"ours {what}"], strict=True))
        sw, sc = (statistics.median(x) * 1e3 for x in zip(*res[f"stock {what}"], strict=True))
        print(f"{preset} {what:<7} ours {ow:7.0f} / {oc:5.0f}   stock {sw:7.0f} / {sc:5.0f}"
              f"   speed-up {sw / ow:.2f}x wall, {sc / oc:.2f}x cpu")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.iters}, ms (wall / cpu)")
    for preset in ("1m", "5m"):
        compare(preset, args.iters)


@contextmanager
def _null() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
