"""The guard decides on the device: an update reads nothing back to the host, a masked optimizer
step changes nothing (any optimizer), and skipped updates are counted without a host read."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from test_update_guard import VARIANTS, agent_for, batch_for

from worldflux.agents.base import guarded_step, masked_step
from worldflux.models.dreamerv3.optim import LaProp
from worldflux.training.skips import SkipCounter

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
# Host reads an update may still make, none of them the guard's: in torch.optim, the per-tensor
# Adam (the agents' Adam on the CPU) reads its step count, a CPU tensor (on CUDA the agents' Adam
# is fused: its step count never leaves the device); TD-MPC2's Q-ensemble dropout on the CPU draws
# its positions as CPU tensors (`nn.ensemble._drop_positions`; other devices use F.dropout). A
# batch's flags are read only where it enters unchecked (`Batch.checked`, set by `validate` and by
# `Replay.gather`): the batches below are validated before the region, as a replay's come.
ALLOWED = ("/worldflux/nn/ensemble.py",)


@contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every Tensor -> Python read raises, except from `ALLOWED` callers."""
    reads: list[str] = []

    def guard(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if not caller.endswith(ALLOWED) and "/torch/optim/" not in caller:
                reads.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
                raise AssertionError(f"host read: Tensor.{name} ({caller})")
            return real(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    yield reads
    monkeypatch.undo()


@pytest.mark.parametrize("poison", [False, True])
@pytest.mark.parametrize("name", VARIANTS)
def test_an_update_reads_nothing_from_the_device(
    name: str, poison: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = agent_for(name)
    agent.update(batch_for(agent, 1))  # the first update builds lazy state (compiled: traces)
    batch = batch_for(agent).validate()  # the boundary check, as `Replay.add` / `gather` make it
    if poison:
        batch.obs[0, 1, 0] = float("nan")
    with no_host_reads(monkeypatch) as reads:
        metrics = agent.update(batch)
    assert reads == []
    assert float(metrics["nonfinite"]) == float(poison)


def _optimizers() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    return {
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.1),
        "adam-fused": lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True),
        "adam-foreach": lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=True),
        "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        "laprop": lambda ps: LaProp(ps, lr=0.1, warmup=2),
    }


def _state(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"p/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        out.update({f"{i}/{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return out


@pytest.mark.parametrize("kind", sorted(_optimizers()))
@pytest.mark.parametrize("poison", ["nan_loss", "inf_grad", "disabled"])
def test_a_masked_step_changes_nothing_for_any_optimizer(kind: str, poison: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = _optimizers()[kind](list(model.parameters()))
    x = torch.randn(5, 3)
    ok, _ = guarded_step(model(x).square().mean(), opt, model.parameters(), 1.0)
    assert ok.dtype == torch.bool and ok.dim() == 0 and bool(ok)
    before = _state(opt, model)
    loss = model(x).square().mean()
    enabled = None
    if poison == "nan_loss":
        loss = loss * float("nan")
    elif poison == "inf_grad":
        model.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    else:
        enabled = torch.tensor(False)
    ok, norm = guarded_step(loss, opt, model.parameters(), 1.0, enabled=enabled)
    assert not bool(ok)
    after = _state(opt, model)
    for k, v in before.items():
        assert v.dtype == after[k].dtype and torch.equal(v, after[k]), k
    if poison == "inf_grad":
        model.weight._backward_hooks.clear()  # type: ignore[union-attr]
    ok, _ = guarded_step(model(x).square().mean(), opt, model.parameters(), 1.0)
    assert bool(ok) and not torch.equal(model.weight, before["p/weight"])


def test_masked_step_keeps_a_host_step_count_of_a_skipped_step() -> None:
    """An optimizer that keeps a Python number in its state gets it back (one host read)."""

    class Counting(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:  # type: ignore[override]
            for p in self.param_groups[0]["params"]:
                self.state[p]["n"] = self.state[p].get("n", 0) + 1
            return super().step(closure)

    p = torch.nn.Parameter(torch.ones(2))
    opt = Counting([p], lr=0.1)
    p.grad = torch.ones(2)
    masked_step(opt, torch.tensor(True))
    masked_step(opt, torch.tensor(False))
    assert opt.state[p]["n"] == 1 and torch.equal(p.detach(), torch.full((2,), 0.9))


def test_skip_counter_counts_streaks_across_reads() -> None:
    c = SkipCounter(limit=3)
    for s in [1.0, 1.0, 0.0, 1.0]:
        c.add(torch.tensor(s))
    assert c.read() is None and (c.total, c.streak) == (3, 1)
    assert c.read() is None  # nothing new since
    for s in [1.0, 1.0, 0.0, 0.0]:  # the streak continues across the read: 1 + 2 reaches 3
        c.add(s)
    assert c.read() == 2 and (c.total, c.streak) == (5, 0)  # reached 2 updates before the last
    resumed = SkipCounter(3, total=5, streak=4)  # from a checkpoint's counters
    resumed.add(torch.tensor(1.0))
    assert resumed.read() == 0 and (resumed.total, resumed.streak) == (6, 5)


def test_the_trainer_reads_the_skip_count_every_16_updates(tmp_path: Path) -> None:
    """The trainer stops after `max_nonfinite` skipped updates in a row, noticed at its next
    read (every 16 updates here), and checkpoints exact counts."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
    from test_trainer import make_trainer  # type: ignore[import-not-found]

    from worldflux.training.trainer import TrainingError

    t = make_trainer(tmp_path, nan_every=1, steps=400, eval_every=0, max_nonfinite=5)
    with pytest.raises(TrainingError, match="5 consecutive updates had NaN/Inf") as info:
        t.train()
    assert "(update 5," in str(info.value)  # where the streak reached 5, read later
    assert t.updates % 16 == 0 and t.skips.total == t.updates == t.skips.streak
