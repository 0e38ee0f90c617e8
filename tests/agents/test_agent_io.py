"""``agent.save(dir)`` / ``worldflux.load_agent(dir)``: the specs travel with the weights, so
loading needs no env; Trainer checkpoints without specs still load through their env."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldflux
from worldflux.agents import make_agent
from worldflux.agents.io import agent_specs
from worldflux.agents.predict import space_from_json, space_to_json
from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.spec import ActionSpec, ObsSpec
from worldflux.envs import make_env
from worldflux.training.checkpoint import CheckpointError, pack, save_checkpoint

CASES = [
    ("tdmpc2:debug", {"act": "policy"}, "Pendulum-v1"),
    ("tdmpc2:debug", {}, "CartPole-v1"),
    ("dreamerv3:debug", {}, "Pendulum-v1"),
]


def no_envs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of building an env fail, as when its package is not installed."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("the env's package is not installed")

    monkeypatch.setattr("worldflux.envs.make_env", refuse)
    monkeypatch.setattr("worldflux.envs.make.make_env", refuse)
    monkeypatch.setattr("worldflux.training.run.env_factory", refuse)


def actions(agent, obs: np.ndarray, steps: int = 3) -> list[np.ndarray]:
    torch.manual_seed(7)
    state, out = None, []
    for _ in range(steps):
        action, state = agent.predict(obs, state)
        out.append(np.asarray(action))
    return out


@pytest.mark.parametrize(("model", "options", "env_id"), CASES)
def test_save_then_load_without_the_env_acts_identically(
    model: str, options: dict, env_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(env_id)
    native = env.native_action_space
    agent = make_agent(model, env.observation_space, env.action_space, seed=3,
                       agent_options=options, native_action_space=native)  # fmt: skip
    obs = np.asarray(env.reset(seed=0).obs)
    one_update(agent)
    agent.save(tmp_path / "agent")
    no_envs(monkeypatch)
    loaded = worldflux.load_agent(tmp_path / "agent")
    assert type(loaded) is type(agent) and loaded.options == options
    assert loaded.native_action_space == env.native_action_space
    for a, b in zip(actions(agent, obs), actions(loaded, obs), strict=True):
        np.testing.assert_array_equal(a, b)
    same_tree(loaded.state_dict(), agent.state_dict())  # weights, optimizers, extra state


def same_tree(a: dict, b: dict) -> None:
    tensors_a: dict[str, torch.Tensor] = {}
    tensors_b: dict[str, torch.Tensor] = {}
    assert pack(a, tensors_a) == pack(b, tensors_b)
    for key, value in tensors_a.items():
        assert torch.equal(value, tensors_b[key]), key


def one_update(agent) -> None:
    """A replayed-batch update on random data, so the optimizers hold state worth saving."""
    b, t = 2, agent.seq_len
    spec, action_spec = agent.model.obs_spec, agent.model.action_spec
    obs = {k: torch.randn(b, t, *f.shape) for k, f in spec.fields.items()}
    if action_spec.discrete:
        action = torch.eye(action_spec.dim)[torch.randint(0, action_spec.dim, (b, t))]
    else:
        action = torch.rand(b, t, action_spec.dim) * 2 - 1
    flags = torch.zeros(b, t, dtype=torch.bool)
    first = flags.clone()
    first[:, 0] = True
    action[:, 0] = 0.0  # the convention: no action led to a first row
    batch = Batch(
        obs=obs if spec.is_dict else next(iter(obs.values())),
        action=action,
        reward=torch.randn(b, t) * ~first,
        is_first=first,
        is_terminal=flags,
        is_last=flags,
    )
    agent.update(batch)


def test_save_again_replaces_but_foreign_dirs_are_refused(tmp_path: Path) -> None:
    env = make_env("Pendulum-v1")
    agent = make_agent("tdmpc2:debug", env.observation_space, env.action_space)
    agent.save(tmp_path / "a")
    agent.save(tmp_path / "a")  # an earlier save is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a saved agent"):
        agent.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_agents_not_built_by_make_agent_cannot_be_saved(tmp_path: Path) -> None:
    from worldflux.agents.dreamer import DreamerAgent

    model = worldflux.create_world_model("dreamerv3:debug", spaces.Box(-1, 1, (3,), np.float32),
                                         spaces.Discrete(2))  # fmt: skip
    agent = DreamerAgent(model)
    assert agent_specs(agent) is None
    with pytest.raises(ConfigError, match="not built by worldflux.make_agent"):
        agent.save(tmp_path / "a")


def test_damaged_specs_are_one_checkpoint_error(tmp_path: Path) -> None:
    env = make_env("Pendulum-v1")
    agent = make_agent("tdmpc2:debug", env.observation_space, env.action_space)
    specs = agent_specs(agent)
    assert specs is not None
    bad = {**specs, "config": {"family": "tdmpc2", "fields": {"horizon": -1}}}
    save_checkpoint(tmp_path / "a", {"specs": bad, "agent": agent.state_dict()})
    with pytest.raises(CheckpointError, match="horizon: expected an int >= 1"):
        worldflux.load_agent(tmp_path / "a")
    bad = {**specs, "obs_spec": {"is_dict": False, "fields": {"obs": {"shape": [0]}}}}
    save_checkpoint(tmp_path / "b", {"specs": bad, "agent": agent.state_dict()})
    with pytest.raises(CheckpointError, match=r"specs: obs_spec\['obs'\]: expected"):
        worldflux.load_agent(tmp_path / "b")


def test_a_trainer_checkpoint_without_specs_loads_through_its_env(tmp_path: Path) -> None:
    """Run checkpoints written before specs were stored: the env gives the spaces."""
    env = make_env("Pendulum-v1")
    agent = make_agent("tdmpc2:debug", env.observation_space, env.action_space, seed=1,
                       agent_options={"act": "policy"})  # fmt: skip
    run = {"model": "tdmpc2:debug", "env": "Pendulum-v1", "trainer": {"seed": 1},
           "agent": {"act": "policy"}}  # fmt: skip
    save_checkpoint(tmp_path / "ckpt", {"run": run, "agent": agent.state_dict()})
    loaded = worldflux.load_agent(tmp_path / "ckpt")
    assert loaded.native_action_space == spaces.Box(-2.0, 2.0, (1,), np.float32)  # Pendulum's
    obs = np.zeros(3, np.float32)
    np.testing.assert_allclose(loaded.predict(obs)[0], 2.0 * model_format(agent, obs), rtol=1e-6)


def model_format(agent, obs: np.ndarray) -> np.ndarray:
    return np.asarray(agent.predict(obs)[0])  # native_action_space unset: the model's [-1, 1]


def test_spec_and_space_json_round_trip_and_reject_garbage() -> None:
    obs = ObsSpec.from_space(spaces.Dict({
        "image": spaces.Box(0, 255, (3, 64, 64), np.uint8),
        "state": spaces.Box(-1, 1, (5,), np.float32),
    }))  # fmt: skip
    assert ObsSpec.from_json(json.loads(json.dumps(obs.to_json())), "x") == obs
    act = ActionSpec(4, True)
    assert ActionSpec.from_json(act.to_json(), "x") == act
    for space in (spaces.Discrete(3, start=-1), spaces.Box(-2.0, 3.5, (2, 2), np.float32)):
        assert space_from_json(json.loads(json.dumps(space_to_json(space))), "x") == space
    for data in (None, [], {"is_dict": True}, {"is_dict": False, "fields": {"o": {}}}):
        with pytest.raises(SpecError, match="where"):
            ObsSpec.from_json(data, "where")
    with pytest.raises(SpecError, match="where"):
        ActionSpec.from_json({"dim": 0, "discrete": True}, "where")
    bad_box = {"type": "box", "shape": [1], "dtype": "float32", "low": [2.0], "high": [1.0]}
    for data in ({"type": "discrete", "n": 0, "start": 0}, bad_box, {"type": "multi"}):
        with pytest.raises(SpecError, match="where"):
            space_from_json(data, "where")
