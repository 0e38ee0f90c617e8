"""The worldflux command line: help everywhere, train -> eval -> resume -> imagine, models."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from worldflux.cli import app

runner = CliRunner()
COMMANDS = ["train", "eval", "imagine", "models", "resume", "demo"]
FAST = ["seed_steps=40", "eval_episodes=1", "eval_every=0", "progress=false",
        "tensorboard=false", "updates_per_step=0.1"]  # fmt: skip


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command: str | None) -> None:
    result = runner.invoke(app, ([command] if command else []) + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_models_lists_presets_with_counts() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "tdmpc2:debug" in result.output and "dreamerv3:size1m" in result.output


def test_train_eval_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "Pendulum-v1", "--run-dir", str(run), "steps=60",
            "agent.act=policy", "agent.batch_size=8", *FAST]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "checkpoint:" in result.output and (run / "run.json").is_file()
    assert (run / "checkpoints" / "step_0000000060").is_dir()
    result = runner.invoke(app, ["eval", str(run), "--episodes", "1"])
    assert result.exit_code == 0, result.output
    assert "over 1 episodes" in result.output
    result = runner.invoke(app, ["resume", str(run), "--steps", "80"])
    assert result.exit_code == 0, result.output
    assert "resumed at env step 60" in result.output
    assert (run / "checkpoints" / "step_0000000080").is_dir()
    assert "env steps:   80" in result.output


def test_imagine_writes_a_video(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "dreamerv3:debug", "--env", "CartPole-v1", "--run-dir", str(run),
            "steps=40", *FAST]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    out = tmp_path / "imagination.gif"
    result = runner.invoke(app, ["imagine", str(run), "--out", str(out), "--length", "12"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 1000
    video = tmp_path / "eval.mp4"
    result = runner.invoke(app, ["eval", str(run), "--episodes", "1", "--video", str(video)])
    assert result.exit_code == 0, result.output
    assert video.is_file() and video.stat().st_size > 1000


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "tdmpc2:nope", "--env", "Pendulum-v1",
                                 "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2
    assert "unknown preset 'nope'" in result.output
    result = runner.invoke(app, ["train", "tdmpc2:debug", "--env", "Pendulum-v1", "steps=-3",
                                 "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "steps: expected an int >= 1" in result.output
    result = runner.invoke(app, ["resume", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "run.json" in result.output
