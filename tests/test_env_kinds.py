"""Every kind of environment through the whole command line at tiny budgets:
train (with an evaluation inside the loop) -> eval -> eval --video -> imagine.

dm_control pixels once crashed at the first evaluation (MuJoCo hands out a vertically flipped
frame, a numpy view with a negative stride that torch cannot wrap), losing the run before its
first checkpoint; each env kind here goes through every command that touches observations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from worldflux.cli import app

runner = CliRunner()
TINY = ["steps=24", "seed_steps=16", "updates_per_step=0.25", "eval_every=20", "eval_episodes=1",
        "checkpoint_every=20", "progress=false", "tensorboard=false", "replay_capacity=500",
        "agent.batch_size=2", "agent.seq_len=4"]  # fmt: skip

# (env id, env options keeping episodes short so that evaluations stay fast)
ENV_KINDS = {
    "gym-vector": ("Pendulum-v1", []),
    "gym-image": ("CartPole-v1", ["env.image=true", "env.size=32"]),
    "dmc-state": ("dmc:cartpole-swingup", ["env.action_repeat=50"]),
    "dmc-pixels": ("dmc:cartpole-swingup", ["env.image=true", "env.action_repeat=50"]),
    "atari": ("atari:Pong", ["env.max_frames=200"]),
}


def _needs(kind: str) -> None:
    if kind.startswith("dmc"):
        pytest.importorskip("dm_control")
    if kind == "atari":
        pytest.importorskip("ale_py")


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


@pytest.mark.parametrize("kind", list(ENV_KINDS))
def test_train_eval_imagine_video(kind: str, tmp_path: Path) -> None:
    _needs(kind)
    env_id, options = ENV_KINDS[kind]
    run = tmp_path / "run"
    out = _ok(["train", "dreamerv3:debug", "--env", env_id, "--run-dir", str(run),
               *options, *TINY])  # fmt: skip
    assert "last eval:" in out and (run / "checkpoints" / "step_0000000024").is_dir()
    assert "over 1 episodes" in _ok(["eval", str(run), "--episodes", "1"])
    video = tmp_path / "eval.gif"
    _ok(["eval", str(run), "--episodes", "1", "--video", str(video)])
    assert video.stat().st_size > 1000
    imagined = tmp_path / "imagination.gif"
    _ok(["imagine", str(run), "--out", str(imagined), "--length", "8", "--context", "3"])
    assert imagined.stat().st_size > 1000


def test_tdmpc2_on_dmc_pixels_evaluates_inside_the_loop(tmp_path: Path) -> None:
    """The reported crash: TD-MPC2 on dm_control pixels died at its first evaluation."""
    _needs("dmc-pixels")
    run = tmp_path / "run"
    pixels = ["env.image=true", "env.action_repeat=50", "agent.act=policy"]
    out = _ok(["train", "tdmpc2:debug", "--env", "dmc:cartpole-swingup", "--run-dir", str(run),
               *pixels, *TINY[:-1]])  # fmt: skip
    assert "last eval:" in out
    assert "over 1 episodes" in _ok(["eval", str(run), "--episodes", "1"])
