"""Trainer behaviour: exact resume, non-finite guard, train ratio, evaluation, logging."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from training_stub import StubAgent

from worldflux.data.replay import Replay
from worldflux.envs import GymEnv, make_env
from worldflux.training.checkpoint import load_checkpoint
from worldflux.training.config import TrainerConfig
from worldflux.training.logging import read_metrics
from worldflux.training.signals import Terminated
from worldflux.training.sources import EnvSource
from worldflux.training.trainer import Trainer, TrainingError


def make_trainer(run_dir: Path, nan_every: int = 0, **cfg: Any) -> Trainer:
    settings: dict[str, Any] = dict(
        steps=400,
        seed=3,
        num_envs=2,
        seed_steps=60,
        updates_per_step=0.5,
        eval_every=200,
        eval_episodes=2,
        checkpoint_every=10**9,
        log_every=100,
        progress=False,
        tensorboard=False,
        replay_capacity=2000,
    )
    settings.update(cfg)
    config = TrainerConfig(**settings)
    env_fn = lambda i: make_env("CartPole-v1")  # noqa: E731
    probe = env_fn(0)
    replay = Replay(
        config.replay_capacity,
        probe.observation_space,
        probe.action_space,
        num_envs=config.num_envs,
        seed=config.seed,
    )
    agent = StubAgent(4, 2, seed=config.seed, nan_every=nan_every)
    source = EnvSource(env_fn, config.num_envs, config.seed, replay)
    return Trainer(agent, source, config, run_dir, eval_env_fn=env_fn)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"w.{k}": v.clone() for k, v in trainer.agent.modules()["model"].state_dict().items()}
    opt = trainer.agent.optimizers()["model"].state_dict()["state"]
    for pid, st in opt.items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = torch.as_tensor(v).clone()
    return out


def test_resume_is_exact(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full")
    full_result = full.train()
    half = make_trainer(tmp_path / "split")
    half.train(stop_at=200)
    half.config = TrainerConfig(**{**half.config.to_dict(), "checkpoint_every": 100_000})
    half.train(stop_at=260)  # progress past the checkpoint that is lost on "crash"
    (tmp_path / "split" / "checkpoints" / "step_0000000260").rename(tmp_path / "lost")
    del half
    resumed = make_trainer(tmp_path / "split")
    resumed.restore()
    assert resumed.step == 200
    result = resumed.train()
    assert result["updates"] == full_result["updates"] > 100
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(full.replay) == len(resumed.replay)
    for name, arr in full.replay.arrays.items():
        np.testing.assert_array_equal(arr, resumed.replay.arrays[name], err_msg=name)
    ev_full = [r["return_mean"] for r in read_metrics(tmp_path / "full", "eval")]
    ev_split = [r["return_mean"] for r in read_metrics(tmp_path / "split", "eval")]
    assert ev_full == ev_split and len(ev_full) == 2
    assert full_result["eval"]["returns"] == result["eval"]["returns"]


def test_resume_differs_without_restore(tmp_path: Path) -> None:
    """Sanity check that the exact-resume test can fail: a different seed gives other weights."""
    a = make_trainer(tmp_path / "a", steps=200)
    a.train()
    b = make_trainer(tmp_path / "b", steps=200, seed=4)
    b.train()
    assert not torch.equal(weights(a)["w.weight"], weights(b)["w.weight"])


def test_train_ratio_sets_updates(tmp_path: Path) -> None:
    # 16 replayed steps per update (4 x 4); ratio 8 -> 0.5 updates per env step after seeding
    t = make_trainer(
        tmp_path, steps=300, seed_steps=100, updates_per_step=None, train_ratio=8.0, eval_every=0
    )
    result = t.train()
    assert t.updates_per_step == 0.5
    assert result["updates"] == 100


def test_nonfinite_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, nan_every=3, steps=200, eval_every=0)
    result = t.train()
    assert result["nonfinite"] == result["updates"] // 3 > 0
    for p in t.agent.modules()["model"].parameters():
        assert torch.isfinite(p).all()


def test_repeated_nonfinite_stops_the_run(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, nan_every=1, steps=400, eval_every=0, max_nonfinite=5)
    with pytest.raises(TrainingError, match="5 consecutive updates had NaN/Inf"):
        t.train()


def test_logs_and_checkpoints(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, steps=400, checkpoint_every=100, keep_checkpoints=2)
    t.train()
    names = [p.name for p in t.checkpoints.list()]
    assert names == ["step_0000000300", "step_0000000400"]
    assert not load_checkpoint(t.checkpoints.path_for(300))["partial_step"]  # resumes exactly
    kinds = {r["kind"] for r in read_metrics(tmp_path)}
    assert {"episode", "train", "eval", "profile"} <= kinds
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


def test_eval_returns_are_real(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, steps=100, eval_every=0)
    result = t.run_eval()
    # the stub's greedy rule (push toward the cart's position sign) ends CartPole episodes early
    assert len(result["returns"]) == 2
    assert all(r == length for r, length in zip(result["returns"], result["lengths"], strict=True))
    assert all(1 <= r < 500 for r in result["returns"])


def test_resume_without_saved_replay_restarts_episodes(tmp_path: Path) -> None:
    """save_replay=false: the replay comes back empty, so the envs start fresh episodes (seeded
    from the saved trainer RNG) and updates pause while the replay refills; not bit-exact."""
    first = make_trainer(tmp_path / "run", save_replay=False)
    first.train(stop_at=200)
    updates_before = first.updates
    assert not (first.checkpoints.latest() / "replay").exists()  # type: ignore[operator]
    resumed = []
    for _ in range(2):
        t = make_trainer(tmp_path / "run", save_replay=False)
        t.restore()
        assert t.step == 200 and t.source.runner.is_first.all() and t.source.act_state is None
        assert t.learn_from == 200 + 60  # refill for seed_steps before updating again
        result = t.train()
        assert result["step"] == 400 and result["updates"] > updates_before
        resumed.append(weights(t))
        # the rerun must start from the same checkpoint, not the one this run just wrote
        for ckpt in t.checkpoints.list()[1:]:
            shutil.rmtree(ckpt)
    for k in resumed[0]:  # deterministic: the fresh episodes are seeded from the saved RNG
        assert torch.equal(resumed[0][k], resumed[1][k]), k


def _patch_step(monkeypatch: pytest.MonkeyPatch, at: int, effect: Any) -> list[int]:
    """GymEnv.step calls `effect()` on its `at`-th call (counted over all envs)."""
    calls = [0]
    original = GymEnv.step

    def step(self: GymEnv, action: Any) -> Any:
        calls[0] += 1
        if calls[0] == at:
            effect()
        return original(self, action)

    monkeypatch.setattr(GymEnv, "step", step)
    return calls


@pytest.mark.parametrize(
    ("signum", "default", "raised", "said"),
    [
        (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt, "interrupted"),
        (signal.SIGTERM, signal.SIG_DFL, Terminated, "stopped by SIGTERM"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stop_signal_saves_an_exact_checkpoint(
    signum: int,
    default: Any,
    raised: type[BaseException],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C and SIGTERM (kill, docker stop, Slurm) wait for the end of the iteration."""
    if signal.getsignal(signum) is not default:
        pytest.skip("a custom handler is installed for this signal; the trainer leaves it alone")
    full = make_trainer(tmp_path / "full")
    full.train()
    t = make_trainer(tmp_path / "split")
    _patch_step(monkeypatch, 301, lambda: signal.raise_signal(signum))
    with pytest.raises(raised):
        t.train()
    monkeypatch.undo()
    assert signal.getsignal(signum) is default  # handler restored
    stopped = t.step
    assert 0 < stopped < 400 and t.checkpoints.latest() == t.checkpoints.path_for(stopped)
    assert not load_checkpoint(t.checkpoints.path_for(stopped))["partial_step"]
    err = capsys.readouterr().err
    assert f"{said} at step {stopped}" in err
    assert f"worldflux resume {tmp_path / 'split'}" in err
    del t
    resumed = make_trainer(tmp_path / "split")
    resumed.restore()
    assert resumed.step == stopped
    resumed.train()
    a, b = weights(full), weights(resumed)
    for k in a:  # the signal waited for the end of the iteration: the resume is exact
        assert torch.equal(a[k], b[k]), k


def test_keyboard_interrupt_mid_step_saves_a_partial_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    t = make_trainer(tmp_path)
    _patch_step(monkeypatch, 250, interrupt)  # in the middle of an iteration
    with pytest.raises(KeyboardInterrupt):
        t.train()
    monkeypatch.undo()
    stopped = t.step
    assert 0 < stopped < 400
    tree = load_checkpoint(t.checkpoints.path_for(stopped))
    assert tree["partial_step"] and tree["counters"]["step"] == stopped
    del t
    resumed = make_trainer(tmp_path)
    resumed.restore()
    assert resumed.step == stopped and resumed.source.runner.is_first.all()  # fresh episodes
    assert len(resumed.replay) > 0  # the saved replay is kept
    result = resumed.train()
    assert result["step"] == 400
