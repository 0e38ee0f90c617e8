"""The worldflux command line: help everywhere, train -> eval -> resume -> imagine, models."""

from __future__ import annotations

import json
import os
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
    result = runner.invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "tdmpc2:debug" in result.output and "dreamerv3:size1m" in result.output
    # a bare family name builds its default: the listing says which one
    for default in ("dreamerv3:size12m", "tdmpc2:5m", "jepa:small"):
        assert f"{default} (default)" in result.output
    assert result.output.count("(default)") == 3 + 1  # one per family, one in the caption


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


def test_resume_a_finished_run_says_how_to_extend_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "Pendulum-v1", "--run-dir", str(run), "steps=50",
            "agent.act=policy", "agent.batch_size=8", *FAST]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["resume", str(run)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "is finished (at env step 50 of 50)" in result.output
    assert f"worldflux resume {run} --steps 100" in result.output
    assert "resumed at" not in result.output
    result = runner.invoke(app, ["resume", str(run), "--steps", "50"])
    assert result.exit_code == 2
    assert "--steps: expected a new total above the 50 env steps" in result.output
    assert json.loads((run / "run.json").read_text())["trainer"]["steps"] == 50


def test_eval_is_reproducible(tmp_path: Path) -> None:
    """MPPI acting samples from torch's global RNG: `eval --seed` seeds it too."""
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "Pendulum-v1", "--run-dir", str(run), "steps=50",
            "agent.batch_size=8", "env.max_episode_steps=30", *FAST]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0

    def returns(*extra: str) -> str:
        result = runner.invoke(app, ["eval", str(run), "--episodes", "2", *extra])
        assert result.exit_code == 0, result.output
        return result.output.split("returns: ")[1]

    first = returns()
    assert returns() == first and returns("--seed", "0") == first
    assert returns("--seed", "1") != first  # other env starts (and planner noise)


def _our_shm_segments() -> list[str]:
    """Shared-memory segments of collector pools this (test) process created."""
    return [e for e in os.listdir("/dev/shm") if e.startswith(f"worldflux_wf{os.getpid()}x")]


COLLECT = ["agent.act=policy", "agent.batch_size=8", "replay_capacity=2000", *FAST]


def test_train_with_collectors_then_resume_with_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "CartPole-v1", "--run-dir", str(run),
            "--collectors", "2", "--start-method", "fork", "steps=200", *COLLECT]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "collectors:  2 (fork)" in result.output, result.output
    recorded = json.loads((run / "run.json").read_text())["collectors"]
    assert recorded == {"num_collectors": 2, "start_method": "fork"}
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert checkpoints and int(checkpoints[-1].name.split("_")[-1]) >= 200
    assert _our_shm_segments() == []
    result = runner.invoke(app, ["eval", str(run), "--episodes", "1"])
    assert result.exit_code == 0, result.output
    # `resume` continues with the recorded collectors, not in one process. Collectors deliver
    # whole chunks and run ahead of a loaded learner, so the first run may end past its 200.
    target = int(checkpoints[-1].name.split("_")[-1]) + 120
    result = runner.invoke(app, ["resume", str(run), "--steps", str(target)])
    assert result.exit_code == 0, result.output
    assert "collectors:  2 (fork)" in result.output, result.output
    assert int(sorted((run / "checkpoints").iterdir())[-1].name.split("_")[-1]) >= target
    assert _our_shm_segments() == []
    done = int(sorted((run / "checkpoints").iterdir())[-1].name.split("_")[-1])
    more = str(done + 80)  # collectors deliver whole chunks: a run may end past its budget
    result = runner.invoke(app, ["resume", str(run), "--collectors", "3", "--steps", more])
    assert result.exit_code == 2 and "streams" in result.output


def test_train_with_one_spawned_collector(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "CartPole-v1", "--run-dir", str(run),
            "--collectors", "1", "steps=64", *COLLECT]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "collectors:  1 (spawn)" in result.output, result.output
    assert (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
    assert _our_shm_segments() == []
    bad = args[: -len(COLLECT) - 1] + ["--start-method", "thread", "steps=64"]
    result = runner.invoke(app, bad)
    assert result.exit_code == 2 and "thread" in result.output


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
