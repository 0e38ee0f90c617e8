"""Videos during training (`video_every`): written, logged, and leaving the run unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import pytest
import torch

from worldflux.envs import make_env
from worldflux.training.run import build_trainer
from worldflux.training.run_config import parse_overrides
from worldflux.training.trainer import Trainer


def _trainer(run_dir: Path, model: str, env: str, *items: str) -> Trainer:
    base = ["steps=120", "seed=2", "seed_steps=60", "updates_per_step=0.1", "log_every=10",
            "eval_every=0", "checkpoint_every=1000000", "progress=false", "tensorboard=false",
            "agent.batch_size=4"]  # fmt: skip
    return build_trainer(parse_overrides(model, env, [*base, *items]), run_dir)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record but the wall-clock ones (time stamps, the profile's seconds)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]
    return [r for r in records if r["kind"] != "profile"]


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, m in trainer.agent.modules().items()
            for k, v in m.state_dict().items()}  # fmt: skip


def test_videos_are_logged_and_change_nothing_in_the_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = _trainer(tmp_path / "plain", "dreamerv3:debug", "CartPole-v1")
    plain.train()
    filmed = _trainer(tmp_path / "filmed", "dreamerv3:debug", "CartPole-v1", "video_every=60",
                      "tensorboard=true")  # fmt: skip
    filmed.train()
    # the video at step 60 acts and imagines with the agent mid-run: the rest must not notice
    trained = [r for r in _records(tmp_path / "plain") if r["kind"] == "train"]
    assert len(trained) >= 5 and trained[-1]["step"] > 60
    assert _records(tmp_path / "plain") == _records(tmp_path / "filmed")
    a, b = _weights(plain), _weights(filmed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    videos = tmp_path / "filmed" / "videos"
    names = sorted(p.name for p in videos.iterdir())
    assert names == [f"{kind}_{step:09d}.gif" for kind in ("eval", "imagination")
                     for step in (60, 120)]  # fmt: skip
    frames = imageio.mimread(videos / "eval_000000060.gif")
    assert len(frames) > 5 and max(frames[0].shape[:2]) == 128  # CartPole's 400x600, shrunk
    events = EventAccumulator(str(tmp_path / "filmed" / "tb"), size_guidance={"images": 0})
    events.Reload()
    for kind in ("eval", "imagination"):
        assert [e.step for e in events.Images(f"video/{kind}")] == [60, 120]


def test_envs_that_cannot_render_and_models_without_decoder_get_one_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = _trainer(tmp_path / "run", "tdmpc2:debug", "CartPole-v1", "video_every=20",
                       "agent.act=policy", "steps=80")  # fmt: skip
    assert trainer.videos is not None
    trainer.videos.render_env_fn = lambda i: make_env("CartPole-v1")  # made without rendering
    result = trainer.train()
    assert result["step"] == 80
    err = capsys.readouterr().err
    assert err.count("video: the env cannot render (") == 1
    assert "no eval videos this run" in err
    assert err.count("video: tdmpc2 has no observation decoder; no imagination videos") == 1
    assert not (tmp_path / "run" / "videos").exists()


def test_video_every_needs_an_env(tmp_path: Path) -> None:
    from training_stub import StubAgent

    from worldflux.core.exceptions import ConfigError
    from worldflux.data.replay import Replay
    from worldflux.training.config import TrainerConfig
    from worldflux.training.sources import EnvSource

    probe = make_env("CartPole-v1")
    replay = Replay(100, probe.observation_space, probe.action_space)
    source = EnvSource(lambda i: make_env("CartPole-v1"), 1, 0, replay)
    config = TrainerConfig(video_every=5, eval_every=0, progress=False)
    with pytest.raises(ConfigError, match=r"^video_every: videos need an env; pass --env"):
        Trainer(StubAgent(4, 2), source, config, tmp_path, eval_env_fn=None)
