"""``agent.compile=true`` runs resume exactly: a run stopped half-way and resumed in a new process
(fresh dynamo caches, inductor's random numbers drawn again from the restored generators) ends
with the same weights as the uninterrupted run. Slow: inductor builds each family's update."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ITEMS = [
    "steps=240", "seed=2", "seed_steps=80", "updates_per_step=0.1", "eval_every=120",
    "eval_episodes=1", "checkpoint_every=120", "log_every=120", "progress=false",
    "tensorboard=false", "agent.batch_size=4", "agent.compile=true",
]  # fmt: skip
CASES = {
    "tdmpc2:debug": ("Pendulum-v1", []),
    "dreamerv3:debug": ("CartPole-v1", ["agent.seq_len=8"]),
}


def _run(run_dir: Path, out: Path, model: str, stop_at: int | None, resume: bool) -> None:
    """Train (or resume) in a fresh interpreter; write the model's weights to `out`."""
    env, extra = CASES[model]
    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        from worldflux.training.run import build_trainer, resume_trainer
        from worldflux.training.run_config import parse_overrides
        torch.set_num_threads(1)
        if {resume!r}:
            trainer = resume_trainer({str(run_dir)!r})
        else:
            spec = parse_overrides({model!r}, {env!r}, {[*ITEMS, *extra]!r})
            trainer = build_trainer(spec, {str(run_dir)!r})
        trainer.train({stop_at!r})
        state = trainer.agent.modules()["model"].state_dict()
        save_file({{k: v.contiguous() for k, v in state.items()}}, {str(out)!r})
        trainer.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("model", sorted(CASES))
def test_a_compiled_run_resumes_exactly_in_a_new_process(tmp_path: Path, model: str) -> None:
    _run(tmp_path / "full", tmp_path / "full.safetensors", model, None, resume=False)
    _run(tmp_path / "split", tmp_path / "half.safetensors", model, 120, resume=False)
    _run(tmp_path / "split", tmp_path / "rest.safetensors", model, None, resume=True)
    full, half = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "half.safetensors")
    rest = load_file(tmp_path / "rest.safetensors")
    assert any(not torch.equal(half[k], full[k]) for k in full)  # the second half trained
    for k in full:
        assert torch.equal(full[k], rest[k]), k
