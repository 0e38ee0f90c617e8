"""Minari import: a local Minari dataset (made with minari's own API, no network) becomes a
saved replay whose rows follow the `Batch` convention, and offline training runs from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

minari = pytest.importorskip("minari")
pytest.importorskip("h5py")
from minari.data_collector.episode_buffer import EpisodeBuffer  # noqa: E402

from worldflux.cli import app  # noqa: E402
from worldflux.core.exceptions import ConfigError  # noqa: E402
from worldflux.data.minari import import_minari  # noqa: E402
from worldflux.data.replay import Replay  # noqa: E402
from worldflux.training.run import build_trainer  # noqa: E402
from worldflux.training.run_config import parse_overrides  # noqa: E402


def _record(env_id: str, episodes: int, max_steps: int) -> tuple[list[Any], Any]:
    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(0)
    out = []
    for ep in range(episodes):
        o, _ = env.reset(seed=ep)
        obs, acts, rews, terms, truncs = [o], [], [], [], []
        done = False
        while not done:
            a = env.action_space.sample()
            o, r, term, trunc, _ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r), terms.append(term), truncs.append(trunc)
            done = term or trunc
        out.append(EpisodeBuffer(id=ep, seed=ep, observations=np.array(obs),
                                 actions=np.array(acts), rewards=rews, terminations=terms,
                                 truncations=truncs, infos={}))  # fmt: skip
    return out, env


@pytest.fixture
def datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    made = {}
    for name, env_id in (
        ("cartpole/random-v0", "CartPole-v1"),
        ("pendulum/random-v0", "Pendulum-v1"),
    ):
        episodes, env = _record(env_id, 4, 30)
        minari.create_dataset_from_buffers(
            name, episodes, env=env, eval_env=env, algorithm_name="random", data_format="hdf5",
            author="test", author_email="test@example.com", code_permalink="-",
            description="test data",
        )  # fmt: skip
        made[name] = episodes
    return made


def test_rows_follow_the_batch_convention(tmp_path: Path, datasets: dict[str, Any]) -> None:
    for name, discrete in (("cartpole/random-v0", True), ("pendulum/random-v0", False)):
        out = import_minari(name, tmp_path / name.replace("/", "-"))
        replay = Replay.load(out)
        episodes = datasets[name]
        assert len(replay) == sum(len(ep.rewards) + 1 for ep in episodes)
        a = replay.arrays
        start = 0
        for ep in episodes:
            t = len(ep.rewards)
            rows = slice(start, start + t + 1)
            np.testing.assert_allclose(a["obs.obs"][rows], ep.observations, rtol=1e-6)
            assert a["is_first"][rows].tolist() == [True] + [False] * t
            assert a["is_last"][rows].tolist() == [False] * t + [True]
            assert a["is_terminal"][start + t] == ep.terminations[-1]
            np.testing.assert_allclose(a["reward"][start + 1 : start + t + 1], ep.rewards, 1e-6)
            assert not a["action"][start].any()
            if discrete:  # one-hot of the index taken
                assert (
                    a["action"][start + 1 : start + t + 1].argmax(1).tolist() == ep.actions.tolist()
                )
            else:  # Pendulum's [-2, 2] torque rescaled to [-1, 1]
                np.testing.assert_allclose(
                    a["action"][start + 1 : start + t + 1], ep.actions / 2, 1e-6
                )
            start += t + 1
        info = json.loads((out / "minari.json").read_text())
        assert info["episodes"] == 4 and info["actions_clipped"] == 0


def test_offline_training_from_an_imported_dataset(tmp_path: Path, datasets: Any) -> None:
    result = CliRunner().invoke(app, ["data", "import-minari", "pendulum/random-v0",
                                      str(tmp_path / "data")])  # fmt: skip
    assert result.exit_code == 0, result.output
    items = [f"dataset={tmp_path / 'data'}", "steps=6", "eval_every=0", "checkpoint_every=6",
             "progress=false", "tensorboard=false", "agent.batch_size=4"]  # fmt: skip
    trainer = build_trainer(parse_overrides("tdmpc2:debug", None, items), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.agent.modules()["model"].state_dict().items()}
    out = trainer.train()
    assert out["updates"] == 6
    after = trainer.agent.modules()["model"].state_dict()
    assert any(not (before[k] == after[k]).all() for k in before)


def test_unknown_dataset_and_non_empty_out_dir_are_one_line_errors(
    tmp_path: Path, datasets: Any
) -> None:
    with pytest.raises(ConfigError, match="dataset: expected a local Minari dataset id"):
        import_minari("nothing/here-v0", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("")
    with pytest.raises(ConfigError, match="out_dir: expected a new or empty directory"):
        import_minari("cartpole/random-v0", tmp_path / "full")
