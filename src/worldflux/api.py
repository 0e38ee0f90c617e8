"""`worldflux.train`: the whole training loop in one call, returning the trained agent.

    agent = worldflux.train("tdmpc2:1m", env="Pendulum-v1", steps=15_000)
    action, state = agent.predict(obs)

It is a thin layer over the command line's path (`worldflux.training.run`): the same settings,
the same run directory (``run.json``, metrics, checkpoints), so ``worldflux eval <run_dir>`` and
``worldflux resume <run_dir>`` work on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worldflux.agents import Agent
from worldflux.core.exceptions import ConfigError
from worldflux.training.run import build_trainer, default_run_dir
from worldflux.training.run_config import RunConfig, parse_overrides


def train(
    model: str,
    env: str,
    steps: int | None = None,
    *,
    seed: int | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Agent:
    """Train ``model`` (``"family:preset"``) on ``env`` (a `worldflux.envs.make_env` id) and
    return the trained agent.

    Settings are the command line's ``key=value`` ones (`worldflux.training.run_config`), as
    keyword arguments (`settings`) or a dict (`overrides`, for qualified keys that are not Python
    names): a bare key goes to the one section that knows it (``eval_every=0`` -> trainer,
    ``act="policy"`` -> agent, ``horizon=5`` -> model, ``action_repeat=2`` -> env), a qualified
    one to its section (``{"agent.batch_size": 128, "env.g": 9.0}``). `steps` and `seed` are the
    trainer's (defaults: `TrainerConfig`'s). `run_dir` must be new or empty (default
    ``runs/<model>_<env>_<time>``). Unknown keys and bad values raise `ConfigError` before
    anything is written.
    """
    items = {**(overrides or {}), **settings}
    for key, value in (("steps", steps), ("seed", seed)):
        if value is not None:
            items[f"trainer.{key}"] = value
    config = run_config(model, env, items)
    folder = Path(run_dir) if run_dir is not None else default_run_dir(config)
    with build_trainer(config, folder) as trainer:  # records the env's action space for predict
        trainer.train()
    return trainer.agent  # its envs and env worker processes are closed


def run_config(model: str, env: str, settings: Mapping[str, Any]) -> RunConfig:
    """The `RunConfig` for `settings` (key -> value), sorted by the command line's rules."""
    items = []
    for key, value in settings.items():
        try:
            items.append(f"{key}={json.dumps(value)}")  # parse_overrides reads JSON values
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{key}: expected a JSON value (number, string, bool, list, dict), got {value!r}"
            ) from err
    return parse_overrides(model, env, items)
