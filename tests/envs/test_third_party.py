"""Any Gymnasium env without a wrapper of one's own: constructors without ``render_mode``, the
``module:Id`` hint, MultiDiscrete / MultiBinary / text observation fields, and MiniGrid, Crafter
and highway-env through train -> eval at tiny budgets (when their packages are installed: the
``thirdparty`` extra, which ``make test`` installs when it can)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from typer.testing import CliRunner

from worldflux.cli import app
from worldflux.core.exceptions import ConfigError
from worldflux.envs import make_env


class NoRenderMode(gymnasium.Env):
    """A constructor without ``render_mode`` (gymnasium.make used to get render_mode=None)."""

    def __init__(self, fields: bool = False) -> None:
        self.fields = fields
        self.action_space = spaces.Discrete(2)
        self.observation_space = (
            spaces.Dict({
                "cells": spaces.MultiDiscrete([3, 2]),
                "flags": spaces.MultiBinary(3),
                "mission": spaces.Text(20),
                "pos": spaces.Box(-1, 1, (2,), np.float32),
            })
            if fields
            else spaces.Box(-1, 1, (2,), np.float32)
        )  # fmt: skip

    def _obs(self) -> Any:
        if not self.fields:
            return np.zeros(2, np.float32)
        pos = np.array([0.5, -0.5], np.float32)
        return {"cells": np.array([2, 1]), "flags": np.array([1, 0, 1], np.int8),
                "mission": "go", "pos": pos}  # fmt: skip

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return self._obs(), 1.0, False, False, {}


gymnasium.register("worldflux-test/NoRenderMode-v0", entry_point=NoRenderMode)


def test_an_env_without_render_mode_is_made() -> None:
    env = make_env("worldflux-test/NoRenderMode-v0")
    assert env.reset(seed=0).obs.shape == (2,)


def test_multi_discrete_multi_binary_and_text_fields() -> None:
    with pytest.warns(UserWarning, match=r"fields \['mission'\] hold text.*dropped"):
        env = make_env("worldflux-test/NoRenderMode-v0", fields=True)
    assert sorted(env.observation_space.spaces) == ["cells", "flags", "pos"]
    obs = env.reset(seed=0).obs
    np.testing.assert_array_equal(obs["cells"], [0, 0, 1, 0, 1])  # one-hot of 2 of 3, 1 of 2
    np.testing.assert_array_equal(obs["flags"], [1, 0, 1])
    assert obs["cells"].dtype == obs["flags"].dtype == np.float32


def test_a_package_id_without_its_module_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match="use 'minigrid:MiniGrid-NoSuchTask-v0'"):
        make_env("MiniGrid-NoSuchTask-v0")


# (id, options keeping episodes and images small)
THIRD_PARTY = {
    "minigrid": ("minigrid:MiniGrid-Empty-5x5-v0", ["env.size=16"]),
    "crafter": ("crafter:reward", ["env.size=16", "env.length=30"]),
    "highway_env": ("highway_env:highway-fast-v0", ['env.config={"duration": 5}']),
}
TINY = ["steps=24", "seed_steps=16", "updates_per_step=0.25", "eval_every=0", "eval_episodes=1",
        "checkpoint_every=24", "progress=false", "tensorboard=false", "replay_capacity=500",
        "agent.batch_size=2", "agent.seq_len=4"]  # fmt: skip


@pytest.mark.parametrize("package", list(THIRD_PARTY))
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_train_and_eval(package: str, tmp_path: Path) -> None:
    pytest.importorskip(package)
    env_id, options = THIRD_PARTY[package]
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "dreamerv3:debug", "--env", env_id, "--run-dir", str(run), *options, *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(app, ["eval", str(run), "--episodes", "1"])
    assert result.exit_code == 0 and "over 1 episodes" in result.output, result.output


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tdmpc2_on_minigrid_image_and_direction(tmp_path: Path) -> None:
    """MiniGrid's Dict(image, direction) through TD-MPC2's fused encoder (64x64: its conv)."""
    pytest.importorskip("minigrid")
    run = tmp_path / "run"
    runner = CliRunner()
    tiny = [o for o in TINY if not o.startswith("agent.seq_len")]  # a DreamerV3 option
    args = ["train", "tdmpc2:debug", "--env", "minigrid:MiniGrid-Empty-5x5-v0", "--run-dir",
            str(run), "env.size=64", *tiny]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(app, ["eval", str(run), "--episodes", "1"])
    assert result.exit_code == 0 and "over 1 episodes" in result.output, result.output
