"""The front door: `worldflux.train`, the exports, and `create_world_model` with a config object."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldflux
from worldflux.core.exceptions import ConfigError, RegistryError

TINY = {"seed_steps": 50, "eval_every": 0, "progress": False, "tensorboard": False,
        "updates_per_step": 0.05, "agent.batch_size": 8, "agent.act": "policy"}  # fmt: skip
VECTOR = spaces.Box(-np.inf, np.inf, (3,), np.float32)


def test_the_front_door_exports() -> None:
    from worldflux.agents import make_agent
    from worldflux.agents.io import load_agent
    from worldflux.core.model import WorldModel
    from worldflux.training import Trainer

    assert worldflux.make_agent is make_agent and worldflux.load_agent is load_agent
    assert worldflux.Trainer is Trainer and worldflux.WorldModel is WorldModel
    assert callable(worldflux.train) and set(worldflux.__all__) <= set(dir(worldflux))


def test_train_returns_an_agent_that_predicts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default run dir is under ./runs
    agent = worldflux.train("tdmpc2:debug", env="Pendulum-v1", steps=120, seed=1,
                            overrides=TINY)  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"] == {"name": "tdmpc2:debug"} and run["env"] == {"id": "Pendulum-v1"}
    assert run["trainer"]["steps"] == 120 and run["trainer"]["seed"] == 1
    assert run["agent"] == {"batch_size": 8, "act": "policy"}
    assert agent.native_action_space == spaces.Box(-2.0, 2.0, (1,), np.float32)
    action, _ = agent.predict(np.array([1.0, 0.0, 0.0], np.float32))
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0
    for where in ("worldflux.envs.make_env", "worldflux.envs.make.make_env"):
        monkeypatch.setattr(where, lambda *a, **k: 1 / 0)  # the run's checkpoint needs no env
    loaded = worldflux.load_agent(run_dir)  # the run's latest checkpoint
    assert loaded.native_action_space == agent.native_action_space
    torch.manual_seed(0)
    want = agent.predict(np.zeros(3, np.float32))[0]
    torch.manual_seed(0)
    np.testing.assert_array_equal(loaded.predict(np.zeros(3, np.float32))[0], want)


def test_train_settings_as_keywords_and_qualified_keys(tmp_path: Path) -> None:
    from worldflux.api import run_config

    settings = {"horizon": 4, "model.rho": 0.4, "env.g": 9.0, "eval_every": 0, "act": "policy"}
    config = run_config("tdmpc2:debug", "Pendulum-v1", settings)
    assert config.model == {"name": "tdmpc2:debug", "horizon": 4, "rho": 0.4}
    assert config.env == {"id": "Pendulum-v1", "g": 9.0} and config.trainer == {"eval_every": 0}
    assert config.agent == {"act": "policy"}
    with pytest.raises(ConfigError, match="expected a JSON value"):
        run_config("tdmpc2:debug", "Pendulum-v1", {"device": torch.device("cpu")})
    with pytest.raises(ConfigError, match="not a key of any section"):
        worldflux.train("tdmpc2:debug", "Pendulum-v1", horizn=3, run_dir=tmp_path / "r")
    with pytest.raises(ConfigError):
        worldflux.train("tdmpc2:debug", "Pendulum-v1", steps=-5, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # rejected before anything is written


def test_create_world_model_takes_a_config_object() -> None:
    from worldflux.models.tdmpc2 import PRESETS, TDMPC2Config

    config = dataclasses.replace(PRESETS["debug"], horizon=5)
    by_config = worldflux.create_world_model(config, VECTOR, spaces.Discrete(2), seed=0)
    by_name = worldflux.create_world_model("tdmpc2:debug", VECTOR, spaces.Discrete(2), seed=0,
                                           horizon=5)  # fmt: skip
    assert by_config.config == by_name.config
    for key, value in by_name.state_dict().items():
        assert torch.equal(value, by_config.state_dict()[key]), key
    again = worldflux.create_world_model(config, VECTOR, spaces.Discrete(2), rho=0.3)
    assert again.config.rho == 0.3 and again.config.horizon == 5
    with pytest.raises(ConfigError, match="tdmpc2: unknown config field 'horizn'"):
        worldflux.create_world_model(TDMPC2Config(), VECTOR, spaces.Discrete(2), horizn=3)
    with pytest.raises(RegistryError, match="got dict"):
        worldflux.create_world_model({"horizon": 3}, VECTOR, spaces.Discrete(2))
