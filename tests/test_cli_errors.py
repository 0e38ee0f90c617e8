"""Bad input to the `worldflux` command: one line `error: ...` (exit 2), never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from worldflux.cli import app

runner = CliRunner()
FAST = ["seed_steps=40", "eval_episodes=1", "eval_every=0", "progress=false",
        "tensorboard=false", "updates_per_step=0.1"]  # fmt: skip


def _error(args: list[str]) -> str:
    """The output of a command that must fail cleanly: exit 2, one `error:` line."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _train(model: str, env: str, run: Path, *extra: str) -> None:
    args = ["train", model, "--env", env, "--run-dir", str(run), "steps=40", *FAST, *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A TD-MPC2 and a DreamerV3 run (40 random steps each), shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    _train("tdmpc2:debug", "Pendulum-v1", root / "tdmpc2", "agent.act=policy")
    _train("dreamerv3:debug", "CartPole-v1", root / "dreamer")
    return {"tdmpc2": root / "tdmpc2", "dreamer": root / "dreamer", "root": root}


def _train_error(tmp_path: Path, *extra: str, env: str = "Pendulum-v1") -> str:
    run = tmp_path / "run"
    line = _error(["train", "tdmpc2:debug", "--env", env, "--run-dir", str(run), *FAST, *extra])
    assert not run.exists(), "a rejected command must leave no run directory"
    return line


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=1e300", "TDMPC2Config.lr: expected a float in [0, 1], got 1e+300"),
        ("lr=-0.001", "TDMPC2Config.lr: expected a float in [0, 1], got -0.001"),
        ("checkpoint_every=0", "checkpoint_every: expected an int >= 1, got 0"),
        ("seed=x", "seed: expected an int >= 0, got 'x'"),
        ("seed=true", "seed: expected an int >= 0, got True"),
        (
            "updates_per_step=Infinity",
            "updates_per_step: expected a number > 0 or None (finite), got inf",
        ),
    ],
)
def test_out_of_range_settings(tmp_path: Path, override: str, message: str) -> None:
    assert message in _train_error(tmp_path, override)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path: Path) -> None:
    assert "device: 'cuda' requested but CUDA is not available" in _train_error(
        tmp_path, "device=cuda"
    )


def test_env_module_not_importable(tmp_path: Path) -> None:
    line = _train_error(tmp_path, env="nosuchmod:Foo-v0")
    assert "'nosuchmod:Foo-v0' needs a module that cannot be imported" in line
    assert "No module named 'nosuchmod'" in line


def test_run_dir_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a_file"
    path.write_text("not a run")
    line = _error(["train", "tdmpc2:debug", "--env", "Pendulum-v1", "--run-dir", str(path)])
    assert f"run_dir: {path} is a file; expected a new or empty directory" in line
    assert "run.json" in _error(["resume", str(path)])
    assert "not a worldflux checkpoint" in _error(["eval", str(path)])


def test_checkpoint_of_another_model_in_the_run_dir(runs: dict[str, Path]) -> None:
    mixed = runs["root"] / "mixed"
    shutil.copytree(runs["tdmpc2"], mixed)
    step = mixed / "checkpoints" / "step_0000000100"
    shutil.copytree(runs["dreamer"] / "checkpoints" / "step_0000000040", step)
    line = _error(["resume", str(mixed), "--steps", "200"])
    assert "holds a dreamerv3:debug run, but this run trains tdmpc2:debug" in line
    line = _error(["eval", str(mixed), "--episodes", "1"])  # the run dir's newest checkpoint
    assert "step_0000000100 holds a dreamerv3:debug run, but this run trains tdmpc2:debug" in line


def test_checkpoint_of_another_size_in_the_run_dir(runs: dict[str, Path], tmp_path: Path) -> None:
    """Same family, other widths: torch's size-mismatch list becomes one line."""
    bigger = tmp_path / "bigger"
    _train("tdmpc2:debug", "Pendulum-v1", bigger, "agent.act=policy", "mlp_dim=48")
    shutil.rmtree(bigger / "checkpoints")
    shutil.copytree(runs["tdmpc2"] / "checkpoints", bigger / "checkpoints")
    line = _error(["resume", str(bigger), "--steps", "200"])
    assert "its weights do not fit this TDMPC2 agent" in line and "size mismatch" in line


def test_imagine_needs_more_steps_than_context(runs: dict[str, Path], tmp_path: Path) -> None:
    out = str(tmp_path / "i.gif")
    for length in ("0", "5"):
        line = _error(["imagine", str(runs["dreamer"]), "--length", length, "--out", out])
        assert "--length: expected more steps than --context=5" in line and length in line
    line = _error(["imagine", str(runs["dreamer"]), "--context", "0", "--out", out])
    assert "--context: expected an int >= 1" in line


def test_imagine_on_dict_observations(tmp_path: Path) -> None:
    """Image + state observations (a Dict space): the video shows the image field."""
    run = tmp_path / "dict"
    _train("dreamerv3:debug", "Pendulum-v1", run, "env.image=true", "env.proprio=true",
           "env.size=16")  # fmt: skip
    out = tmp_path / "imagination.gif"
    result = runner.invoke(app, ["imagine", str(run), "--out", str(out), "--length", "8"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "(8 frames)" in result.output


def test_import_cli_does_not_import_torch() -> None:
    """`worldflux --help` must not pay for importing torch (seconds on a small machine)."""
    code = (
        "import sys, worldflux, worldflux.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "worldflux.create_world_model; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
