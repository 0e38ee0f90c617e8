"""A stop signal during a run's evaluation: the evaluation stops at its next env step (TD-MPC2's
10 DMC episodes take ~20 minutes on a CPU core, longer than a scheduler waits before SIGKILL),
the checkpoint is exact, and the resumed run redoes the evaluation and goes on bit for bit."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import make_trainer, weights
from training_stub import StubAgent

from worldflux.training.checkpoint import load_checkpoint
from worldflux.training.logging import read_metrics
from worldflux.training.signals import Terminated

SETTINGS: dict[str, Any] = dict(steps=400, eval_every=200, eval_episodes=3, checkpoint_every=100)


class SignalOnStep:
    """An eval env that raises SIGTERM in this process on the `at`-th step (over all envs)."""

    def __init__(self, env: Any, count: list[int], at: int) -> None:
        self.env, self.count, self.at = env, count, at

    def step(self, action: Any) -> Any:
        self.count[0] += 1
        if self.count[0] == self.at:
            signal.raise_signal(signal.SIGTERM)
        return self.env.step(action)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


@pytest.fixture
def eval_uses_rng_and_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eval acting that draws from the global torch RNG and changes the agent's extra state, as
    MPPI's sampling and warm start do (the stub's own eval acting touches neither): a resume
    that does not put both back diverges."""
    original = StubAgent.act

    def act(self: StubAgent, obs: Any, state: Any = None, *, explore: bool, **kw: Any) -> Any:
        if not explore:
            self.calls += int(torch.randint(0, 3, ()))  # `calls` is the stub's extra state
        return original(self, obs, state, explore=explore, **kw)

    monkeypatch.setattr(StubAgent, "act", act)


@pytest.mark.usefixtures("eval_uses_rng_and_state")
def test_sigterm_during_the_eval_stops_it_at_once_and_resumes_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("a custom SIGTERM handler is installed; the trainer leaves it alone")
    full = make_trainer(tmp_path / "full", **SETTINGS)
    full.train()
    split = make_trainer(tmp_path / "split", **SETTINGS)
    count, inner = [0], split.eval_env_fn
    split.eval_env_fn = lambda i: SignalOnStep(inner(i), count, 5)
    with pytest.raises(Terminated):
        split.train()
    assert count[0] == 5  # not one eval step after the signal (episode 0 lasts >= 8 steps)
    assert split.step == 200 and "stopped by SIGTERM at step 200" in capsys.readouterr().err
    tree = load_checkpoint(split.checkpoints.path_for(200))
    assert not tree["partial_step"] and tree["counters"]["pending"] == 198  # the eval is owed
    assert read_metrics(tmp_path / "split", "eval") == []
    del split

    resumed = make_trainer(tmp_path / "split", **SETTINGS)
    resumed.restore()
    resumed.train()
    assert resumed.agent.calls == full.agent.calls  # type: ignore[attr-defined]
    a, b = weights(full), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def evals(run: str) -> list[tuple[int, float]]:
        return [(r["step"], r["return_mean"]) for r in read_metrics(tmp_path / run, "eval")]

    assert evals("split") == evals("full") and len(evals("full")) == 2


def test_without_a_stop_the_eval_runs_to_the_end(tmp_path: Path) -> None:
    """The stop check costs nothing when no signal comes: every episode is run and logged."""
    t = make_trainer(tmp_path, **SETTINGS)
    count, inner = [0], t.eval_env_fn
    t.eval_env_fn = lambda i: SignalOnStep(inner(i), count, -1)
    t.train()
    records = read_metrics(tmp_path, "eval")
    assert [r["step"] for r in records] == [200, 400]
    assert count[0] == sum(3 * r["length_mean"] for r in records)
