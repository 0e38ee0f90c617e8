"""Faults that used to lose a run: SIGTERM, a crash inside the loop, a second `train` into an
existing run dir. Each ends with the work kept and one line saying how to continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer import _patch_step, make_trainer
from typer.testing import CliRunner

from worldflux.cli import app
from worldflux.training.trainer import Trainer

runner = CliRunner()
WORLDFLUX = [sys.executable, "-c", "from worldflux.cli import main; main()"]


def _resume(run_dir: Path) -> Trainer:
    t = make_trainer(run_dir)
    t.restore()
    return t


@pytest.mark.parametrize("where", ["env", "update"])
def test_a_crash_in_the_loop_saves_a_checkpoint_and_says_how_to_resume(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No periodic checkpoint before the crash: without the save on the way out, all is lost."""

    def boom() -> None:
        raise RuntimeError("the simulator exploded")

    t = make_trainer(tmp_path)
    if where == "env":
        _patch_step(monkeypatch, 250, boom)
    else:
        calls = [0]
        learn = t.agent.update

        def failing_learn(batch: object) -> dict[str, float]:
            calls[0] += 1
            if calls[0] == 40:
                boom()
            return learn(batch)

        monkeypatch.setattr(t.agent, "update", failing_learn)
    with pytest.raises(RuntimeError, match="the simulator exploded"):
        t.train()
    monkeypatch.undo()
    stopped = t.step
    assert 60 < stopped < 400
    err = capsys.readouterr().err
    assert "failed with RuntimeError: the simulator exploded" in err
    assert f"partial checkpoint saved: {t.checkpoints.path_for(stopped)}" in err
    assert f"continue with: worldflux resume {tmp_path}" in err
    resumed = _resume(tmp_path)
    assert resumed.step == stopped and resumed.source.runner.is_first.all()  # fresh episodes
    assert resumed.train()["step"] == 400


def test_a_failing_save_still_reports_the_newest_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The env dies at step 250, then the disk is full: the line names the checkpoint of 200."""
    t = make_trainer(tmp_path, checkpoint_every=100)
    full = [False]

    def boom() -> None:
        full[0] = True
        raise RuntimeError("env died")

    _patch_step(monkeypatch, 250, boom)  # 250 GymEnv.step calls over 2 envs: env step 250
    save = Trainer.save

    def save_until_full(self: Trainer) -> Path:
        if full[0]:
            raise OSError(28, "No space left on device")
        return save(self)

    monkeypatch.setattr(Trainer, "save", save_until_full)
    with pytest.raises(RuntimeError, match="env died"):
        t.train()
    err = capsys.readouterr().err
    assert "could not save a checkpoint" in err and "No space left" in err
    assert f"newest checkpoint: {t.checkpoints.path_for(200)}" in err
    assert f"worldflux resume {tmp_path}" in err


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not list(path.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {pattern} under {path} after {timeout} s"
        time.sleep(0.2)


def test_sigterm_stops_a_background_cli_run_that_ignores_ctrl_c(tmp_path: Path) -> None:
    """`nohup worldflux train ... &` starts with SIGINT ignored: SIGTERM is its graceful stop."""
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "Pendulum-v1", "--run-dir", str(run),
            "steps=100000", "seed_steps=20", "checkpoint_every=40", "eval_every=0",
            "progress=false", "tensorboard=false", "agent.act=policy", "agent.batch_size=8",
            "updates_per_step=0.1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        WORLDFLUX + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        _wait_for(run / "checkpoints", "step_*", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM at step" in text and f"worldflux resume {run}" in text
    assert "Traceback" not in text
    step = int(text.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:010d}").is_dir()
    result = runner.invoke(app, ["resume", str(run), "--steps", str(step + 20)])
    assert result.exit_code == 0, result.output
    assert f"resumed at env step {step}" in result.output


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_train_into_an_existing_run_dir_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "Pendulum-v1", "--run-dir", str(run), "steps=40",
            "seed_steps=20", "eval_every=0", "progress=false", "tensorboard=false",
            "agent.act=policy", "agent.batch_size=8", "updates_per_step=0.1"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    before = _snapshot(run)
    again = runner.invoke(app, [*args[:-1], "updates_per_step=0.2"])
    assert again.exit_code == 2
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"worldflux resume {run}" in lines[0], again.output
    assert _snapshot(run) == before
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    other = runner.invoke(app, [*args[:5], str(stray), *args[6:]])
    assert other.exit_code == 2 and "file" in other.output
    nonempty = tmp_path / "data"
    nonempty.mkdir()
    (nonempty / "keep.csv").write_text("1")
    refused = runner.invoke(app, [*args[:5], str(nonempty), *args[6:]])
    assert refused.exit_code == 2 and "not empty" in refused.output
    assert (nonempty / "keep.csv").read_text() == "1" and len(list(nonempty.iterdir())) == 1
