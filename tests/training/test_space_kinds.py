"""Observation and action kinds beyond Box/Discrete, from the CLI through train -> eval at tiny
budgets: TD-MPC2 on Dict(image, vector) observations; DreamerV3 and TD-MPC2 on
MultiDiscrete and MultiBinary actions, with every action the env receives checked for validity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from typer.testing import CliRunner

from worldflux import create_world_model
from worldflux.cli import app
from worldflux.core.exceptions import SpecError
from worldflux.core.spec import ActionSpec
from worldflux.envs.base import ActionConverter
from worldflux.models.dreamerv3.actor_critic import Actor
from worldflux.models.dreamerv3.config import PRESETS as DREAMER_PRESETS
from worldflux.training.runner import random_actions

SEEN: dict[str, list[Any]] = {}  # env name -> every action it received (for the checks)


class ActionEnv(gymnasium.Env):
    """Reward 1 when the action equals a fixed target; 6 steps per episode. Refuses (raises)
    any action outside its space, so a run that finishes acted validly throughout."""

    def __init__(self, kind: str = "multi_discrete", pixels: bool = False) -> None:
        self.kind, self.pixels = kind, pixels
        if kind == "multi_discrete":
            self.action_space: spaces.Space = spaces.MultiDiscrete([3, 2, 4])
            self.target: Any = np.array([2, 0, 1])
        else:
            self.action_space = spaces.MultiBinary(3)
            self.target = np.array([1, 0, 1], np.int8)
        vector = spaces.Box(-1, 1, (2,), np.float32)
        frame = spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.observation_space = spaces.Dict({"image": frame, "pos": vector}) if pixels else vector
        self.t = 0

    def _obs(self) -> Any:
        pos = np.array([self.t / 6, 1.0], np.float32)
        if not self.pixels:
            return pos
        return {"image": np.full((8, 8, 3), 40 * self.t, np.uint8), "pos": pos}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        SEEN.setdefault(self.kind, []).append(np.array(action))
        self.t += 1
        return self._obs(), float(np.array_equal(action, self.target)), False, self.t >= 6, {}


gymnasium.register("worldflux-test/ActionEnv-v0", entry_point=ActionEnv)

TINY = ["steps=24", "seed_steps=12", "updates_per_step=0.25", "eval_every=0", "eval_episodes=1",
        "checkpoint_every=24", "progress=false", "tensorboard=false", "replay_capacity=500",
        "agent.batch_size=2"]  # fmt: skip
SEQ = ["agent.seq_len=4"]  # DreamerV3 only


def _train_eval(model: str, options: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", model, "--env", "worldflux-test/ActionEnv-v0", "--run-dir", str(run)]
    result = runner.invoke(app, [*args, *options, *TINY])
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(app, ["eval", str(run), "--episodes", "1"])
    assert result.exit_code == 0 and "over 1 episodes" in result.output, result.output


@pytest.mark.parametrize("kind", ["multi_discrete", "multi_binary"])
def test_dreamerv3_acts_validly_in_multi_action_spaces(kind: str, tmp_path: Path) -> None:
    SEEN.pop(kind, None)
    _train_eval("dreamerv3:debug", [f"env.kind={kind}", *SEQ], tmp_path)
    actions = np.stack(SEEN[kind])  # seed steps, policy steps, then the eval episode
    assert len(actions) == 24 + 6
    space = ActionEnv(kind).action_space
    assert all(space.contains(a) for a in actions)
    highs = [3, 2, 4] if kind == "multi_discrete" else [2, 2, 2]
    for i, high in enumerate(highs):  # every choice of every sub-action was taken
        assert sorted(set(actions[:, i].tolist())) == list(range(high))


def test_tdmpc2_multi_binary_actions_and_image_vector_observations(tmp_path: Path) -> None:
    SEEN.pop("multi_binary", None)
    _train_eval("tdmpc2:debug", ["env.kind=multi_binary", "env.pixels=true", "env.size=64"],
                tmp_path)  # fmt: skip
    actions = np.stack(SEEN["multi_binary"])
    assert len(actions) == 24 + 6 and set(np.unique(actions).tolist()) == {0, 1}


def test_tdmpc2_acts_validly_in_multi_discrete_spaces(tmp_path: Path) -> None:
    SEEN.pop("multi_discrete", None)
    _train_eval("tdmpc2:debug", ["env.kind=multi_discrete"], tmp_path)
    actions = np.stack(SEEN["multi_discrete"])  # seed steps, planned steps, the eval episode
    assert len(actions) == 24 + 6
    space = ActionEnv("multi_discrete").action_space
    assert all(space.contains(a) for a in actions)
    for i, high in enumerate([3, 2, 4]):  # every choice of every sub-action was taken
        assert sorted(set(actions[:, i].tolist())) == list(range(high))


def test_dreamerv3_actor_one_categorical_per_group_and_bernoulli_bits() -> None:
    torch.manual_seed(0)
    cfg, feat = DREAMER_PRESETS["debug"], torch.randn(64, 8)
    actor = Actor(8, ActionSpec.from_space(spaces.MultiDiscrete([3, 2, 4])), cfg)
    action, logp, ent = actor.sample(feat)
    assert action.shape == (64, 9) and set(action.unique().tolist()) <= {0.0, 1.0}
    for group in action.split([3, 2, 4], -1):
        assert torch.equal(group.sum(-1), torch.ones(64))  # exactly one choice per group
    log_probs, _ = actor.params(feat)
    per_group = [torch.distributions.Categorical(logits=g) for g in log_probs.split([3, 2, 4], -1)]
    idx = [g.argmax(-1) for g in action.split([3, 2, 4], -1)]
    expect = sum(d.log_prob(i) for d, i in zip(per_group, idx, strict=True))
    torch.testing.assert_close(logp, expect)
    torch.testing.assert_close(ent, sum(d.entropy() for d in per_group))
    mode = actor.mode(feat)
    assert all(torch.equal(g.sum(-1), torch.ones(64)) for g in mode.split([3, 2, 4], -1))

    bits = Actor(8, ActionSpec.from_space(spaces.MultiBinary(5)), cfg)
    action, logp, ent = bits.sample(feat)
    assert action.shape == (64, 5) and set(action.unique().tolist()) <= {-1.0, 1.0}
    p_set = bits.params(feat)[0][..., 1].exp()  # (64, 5) unimix Bernoulli probabilities
    bern = torch.distributions.Bernoulli(probs=p_set)
    torch.testing.assert_close(logp, bern.log_prob((action > 0).float()).sum(-1))
    torch.testing.assert_close(ent, bern.entropy().sum(-1))
    assert torch.equal(bits.mode(feat), torch.where(p_set > 0.5, 1.0, -1.0))


def test_converter_and_random_actions_for_multi_spaces() -> None:
    md = ActionConverter(spaces.MultiDiscrete([3, 2], start=[1, 0]))
    env_action, model = md(np.array([0.1, 0.7, 0.2, 0.0, 1.0], np.float32))
    assert env_action.tolist() == [2, 1] and model.tolist() == [0, 1, 0, 0, 1]
    assert md.normalise(np.array([2, 1])).tolist() == model.tolist()
    with pytest.raises(SpecError, match=r"expected 2 integer indices or a \(5,\) vector"):
        md(np.zeros(4, np.float32))
    mb = ActionConverter(spaces.MultiBinary(3))
    env_action, model = mb(np.array([0.3, -0.2, 0.0], np.float32))
    assert env_action.tolist() == [1, 0, 0] and model.tolist() == [1, -1, -1]
    assert mb.normalise(env_action).tolist() == model.tolist()
    rng = np.random.default_rng(0)
    onehots = random_actions(ActionSpec.from_space(spaces.MultiDiscrete([3, 2])), 50, rng)
    assert (onehots[:, :3].sum(1) == 1).all() and (onehots[:, 3:].sum(1) == 1).all()
    bits = random_actions(ActionSpec.from_space(spaces.MultiBinary(4)), 50, rng)
    assert set(np.unique(bits).tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize(
    ("family", "action"),
    [("dreamerv3", spaces.MultiDiscrete([3, 2])), ("dreamerv3", spaces.MultiBinary(3)),
     ("tdmpc2", spaces.MultiDiscrete([3, 2])), ("tdmpc2", spaces.MultiBinary(3))],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dream_env_takes_multi_actions(family: str, action: spaces.Space) -> None:
    from gymnasium.utils.env_checker import check_env

    from worldflux.envs.dream import DreamEnv

    obs = spaces.Box(-1.0, 1.0, (4,), np.float32)
    model = create_world_model(f"{family}:debug", obs, action, seed=0)
    env = DreamEnv(model, np.stack([obs.sample() for _ in range(8)]), max_steps=5)
    assert env.action_space == action
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    env.step(action.sample())
