"""Trainer config validation, runtime setup, env snapshots, logging and video writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.envs import make_env
from worldflux.training.config import TrainerConfig, setup_runtime
from worldflux.training.env_snapshot import capture_env, restore_env
from worldflux.training.logging import Logger, read_metrics
from worldflux.training.run_config import parse_overrides
from worldflux.training.runner import EnvRunner
from worldflux.training.video import image_frames, write_video


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("steps", 0, "steps: expected an int >= 1, got 0"),
     ("seed_steps", -1, "seed_steps: expected an int >= 0"),
     ("train_ratio", 0.0, "train_ratio: expected a number > 0"),
     ("device", "gpu7", "device: expected 'cpu' or 'cuda"),
     ("threads", 0, "threads: expected an int >= 1")],
)  # fmt: skip
def test_config_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainerConfig(**{field: value})  # type: ignore[arg-type]


def test_unknown_trainer_field_and_cuda_request() -> None:
    with pytest.raises(ConfigError, match=r"unknown fields \['stepz'\]"):
        TrainerConfig.from_dict({"stepz": 3})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            setup_runtime(1, "cuda")
    assert setup_runtime(1, "cpu") == torch.device("cpu")
    assert torch.get_num_threads() == 1


def test_overrides_go_to_their_sections() -> None:
    config = parse_overrides("tdmpc2:debug", "Pendulum-v1",
                             ["steps=10", "agent.act=policy", "env.action_repeat=2", "lr=0.001",
                              "model.horizon=5", "trainer.seed=3", "batch_size=64",
                              "image=true", "env.g=9.0"])  # fmt: skip
    assert config.trainer == {"steps": 10, "seed": 3}
    assert config.agent == {"act": "policy", "batch_size": 64}  # a bare key: the agent has it
    assert config.env == {"id": "Pendulum-v1", "action_repeat": 2, "image": True, "g": 9.0}
    assert config.model == {"name": "tdmpc2:debug", "lr": 0.001, "horizon": 5}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides("tdmpc2:debug", "Pendulum-v1", ["steps"])


@pytest.mark.parametrize(
    ("model", "item", "message"),
    [("tdmpc2:debug", "batch_sise=8", r"batch_sise: not a key .*did you mean agent\.batch_size\?"),
     ("tdmpc2:debug", "stepz=8", r"did you mean trainer\.steps\b"),
     ("jepa:debug", "action_repeat=2",
      r"action_repeat: ambiguous, agent and env both have it; write agent\.action_repeat or "
      r"env\.action_repeat"),
     ("tdmpc2:debug", "trainer.stepz=8", r"unknown fields \['stepz'\]")],
)  # fmt: skip
def test_bare_keys_are_resolved_or_explained(model: str, item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_overrides(model, "Pendulum-v1", [item])


def test_env_snapshot_restores_the_future() -> None:
    env = make_env("Pendulum-v1")
    env.reset(seed=5)
    for _ in range(7):
        env.step(np.array([0.3], np.float32))
    snap = capture_env(env)
    a = [env.step(np.array([0.1], np.float32)).obs for _ in range(5)]
    other = make_env("Pendulum-v1")
    other.reset(seed=99)
    restore_env(other, snap)
    b = [other.step(np.array([0.1], np.float32)).obs for _ in range(5)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_runner_resets_finished_episodes_and_reports_them() -> None:
    runner = EnvRunner(lambda i: make_env("CartPole-v1"), 2, seed=0)
    assert [i for i, row in runner.rows] == [0, 1] and runner.is_first.all()
    finished = []
    for _ in range(200):
        finished += runner.step(np.tile(np.array([[1.0, 0.0]], np.float32), (2, 1)))
    assert finished and all(length == ret for _, ret, length in finished)
    ends = [row for _, row in runner.rows if row.is_first]
    assert all(row.reward == 0.0 for row in ends)
    with pytest.raises(SpecError, match="num_envs"):
        EnvRunner(lambda i: make_env("CartPole-v1"), 0, seed=0)


def test_logger_writes_jsonl(tmp_path: Path) -> None:
    log = Logger(tmp_path, 100, tensorboard=False, progress=False)
    log.log(5, "episode", {"return": 3.0, "vec": torch.zeros(3), "t": torch.tensor(2.0)})
    log.log(6, "train", {"loss": float("nan")})
    log.close()
    records = read_metrics(tmp_path)
    assert records[0]["return"] == 3.0 and records[0]["t"] == 2.0 and "vec" not in records[0]
    assert records[1]["loss"] == "nan" and log.last_return == 3.0
    assert read_metrics(tmp_path, "train")[0]["step"] == 6


def test_video_writing(tmp_path: Path) -> None:
    real = torch.randint(0, 255, (6, 8, 8, 3), dtype=torch.uint8)
    pred = torch.rand(4, 3, 8, 8)  # decoder output: CHW floats in [0, 1]
    frames = image_frames(real, pred, context=2, channels_last=True)
    assert len(frames) == 6 and frames[0].shape == (8, 24, 3)
    assert (frames[0][:, 16:] == 0).all()  # no error within the context
    for suffix in (".gif", ".mp4"):
        path = write_video(tmp_path / f"v{suffix}", frames, fps=5)
        assert path.stat().st_size > 100
    with pytest.raises(SpecError, match=r"\.gif or \.mp4"):
        write_video(tmp_path / "v.avi", frames)


def test_imagination_video_for_image_observations(tmp_path: Path) -> None:
    from gymnasium import spaces

    from worldflux import create_world_model
    from worldflux.core.batch import Batch
    from worldflux.training.video import imagination_video

    obs_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    model = create_world_model("dreamerv3:debug", obs_space, spaces.Discrete(2), seed=0)
    T = 6
    batch = Batch(
        obs=torch.randint(0, 255, (1, T, 64, 64, 3), dtype=torch.uint8),
        action=torch.nn.functional.one_hot(torch.randint(0, 2, (1, T)), 2).float(),
        reward=torch.zeros(1, T),
        is_first=torch.tensor([[True] + [False] * (T - 1)]),
        is_terminal=torch.zeros(1, T, dtype=torch.bool),
        is_last=torch.zeros(1, T, dtype=torch.bool),
    )
    info = imagination_video(model, batch, tmp_path / "imag.gif", context=2)
    assert info["frames"] == T and len(info["open_loop_error"]) == T - 2
    assert all(0.0 <= e <= 1.0 for e in info["open_loop_error"])
    import imageio.v2 as imageio

    frames = imageio.mimread(tmp_path / "imag.gif")
    assert frames[0].shape[:2] == (64, 192)


def test_tensorboard_scalars_are_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    log = Logger(tmp_path, 10, tensorboard=True, progress=False)
    log.log(1, "train", {"loss": 0.5})
    log.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_cpu_with_cuda_present_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.warns(UserWarning, match="CUDA is available but device='cpu'"):
        setup_runtime(1, "cpu")


BAD_OVERRIDES = [
    ("tdmpc2:debug", "agent.nosuch=1",
     r"agent\.nosuch: unknown option for TDMPC2Agent; valid: agent\.act, agent\.batch_size, "
      r"agent\.compile, agent\.compile_mode, agent\.precision$"),
    ("tdmpc2:debug", "agent.batch_size=abc", r"agent\.batch_size: expected int, got 'abc' \(str\)"),
    ("tdmpc2:debug", "agent.seed=3", r"agent\.seed: set by worldflux itself"),
    ("dreamerv3:debug", "agent.train_ratio=64", r"agent\.train_ratio: unknown option"),
    ("tdmpc2:debug", "env.nosuch=1",
     r"env\.nosuch: unknown option for PendulumEnv; valid: .*env\.g"),
    ("tdmpc2:debug", "env.max_episode_steps=abc",
     r"env\.max_episode_steps: expected int or None, got 'abc' \(str\)"),
    ("tdmpc2:debug", "env.image=3", r"image: expected true or false, got 3"),
    ("tdmpc2:debug", "env.action_repeat=two", r"action_repeat: expected an int >= 1, got 'two'"),
    ("tdmpc2:debug", "dataset=/nonexistent/data", r"dataset: cannot open '/nonexistent/data'"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "item", "message"), BAD_OVERRIDES)
def test_bad_overrides_are_config_errors_and_leave_no_run_dir(
    model: str, item: str, message: str, tmp_path: Path
) -> None:
    from worldflux.training.run import build_trainer

    spec = parse_overrides(model, "Pendulum-v1", [item, "progress=false", "tensorboard=false"])
    with pytest.raises(ConfigError, match=message):
        build_trainer(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # validated before run.json is written


def test_cuda_is_checked_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worldflux.training.run as run
    from worldflux.training.config import check_device

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the agent must not be built for an unavailable device")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run, "make_agent", no_build)
    spec = parse_overrides("tdmpc2:debug", "Pendulum-v1", ["device=cuda"])
    with pytest.raises(ConfigError, match="device: 'cuda' requested but CUDA is not available"):
        run.build_trainer(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:3' requested but only 1 CUDA device"):
        check_device("cuda:3")


def test_eval_video_for_an_image_env_with_render_mode(tmp_path: Path) -> None:
    """What `worldflux eval --video` does: env kwargs gain render_mode='rgb_array'."""
    from torch import nn

    from worldflux.agents.base import Agent
    from worldflux.training.evaluate import evaluate
    from worldflux.training.run import env_factory
    from worldflux.training.run_config import RunConfig

    class RandomAgent(Agent):
        batch_size, seq_len, default_train_ratio = 1, 1, 1.0

        def act(self, obs, state=None, *, explore, is_first=None):  # type: ignore[no-untyped-def]
            assert obs.shape[1:] == (64, 64, 3)  # the env's form: one uint8 Tensor
            return torch.nn.functional.one_hot(torch.randint(0, 2, (1,)), 2).float(), None

        def update(self, batch):  # type: ignore[no-untyped-def]
            return {}

        def modules(self) -> dict[str, nn.Module]:
            return {}

        def optimizers(self) -> dict[str, torch.optim.Optimizer]:
            return {}

    config = RunConfig.of("dreamerv3:debug", "CartPole-v1", env_options={"image": True})
    config.env["render_mode"] = "rgb_array"  # as the CLI adds it
    result = evaluate(RandomAgent(), env_factory(config), 1, 0, video=tmp_path / "eval.gif")
    import imageio.v2 as imageio

    frames = imageio.mimread(tmp_path / "eval.gif")
    assert 1 <= len(frames) <= result["lengths"][0]  # GIF merges identical frames
    assert frames[0].shape[:2] == (400, 600)  # the env's own render, not the 64x64 obs


def test_run_file_reads_sections_and_converts_the_old_layout(tmp_path: Path) -> None:
    from worldflux.training.run_config import RUN_FILE, RunConfig, read_run_file, write_run_file

    old = {"model": "dreamerv3:debug", "env": "CartPole-v1", "trainer": {"steps": 9},
           "model_overrides": {"lr": 0.1}, "agent": {"batch_size": 4, "train_ratio": 32.0},
           "env_kwargs": {"image": True}, "collectors": 2}  # fmt: skip
    (tmp_path / RUN_FILE).write_text(json.dumps(old))
    config = read_run_file(tmp_path)
    assert config.model == {"name": "dreamerv3:debug", "lr": 0.1}
    assert config.env == {"id": "CartPole-v1", "image": True}
    assert config.agent == {"batch_size": 4}  # the agent's train_ratio is the trainer's now
    assert config.trainer == {"steps": 9, "train_ratio": 32.0}
    assert config.collectors == {"num_collectors": 2}
    write_run_file(config, tmp_path)
    assert read_run_file(tmp_path) == config
    assert json.loads((tmp_path / RUN_FILE).read_text())["model"]["name"] == "dreamerv3:debug"
    assert RunConfig.of("tdmpc2:1m", "Pendulum-v1").env_id == "Pendulum-v1"


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"model": "tdmpc2:debug", "nosuch": 1}', r"unknown keys \['nosuch'\]"),
     ('{"model": {"name": "tdmpc2:debug"}, "nosuch": {}}', r"unknown keys \['nosuch'\]"),
     ('{"model": {"name": "tdmpc2:debug"}, "agent": 3}', r"agent: expected an object"),
     ('{"model": {}}', r"model.name: expected 'family:preset'"),
     ('{"model": "tdmpc2:debug", "collectors": {"num_collectors": 0}}', "num_collectors"),
     ("[1, 2]", "JSON object")],
)  # fmt: skip
def test_bad_run_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    from worldflux.training.run_config import RUN_FILE, read_run_file

    (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_run_file(tmp_path)
