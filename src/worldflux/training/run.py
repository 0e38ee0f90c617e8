"""Runs from names: ``RunSpec`` (model, env, overrides) -> a ready `Trainer`; resume from a run dir.

A run directory holds ``run.json`` (the spec), ``metrics.jsonl``, ``tb/``, ``checkpoints/`` and
``videos/``. `resume_trainer(run_dir)` rebuilds everything from ``run.json`` and the latest
checkpoint, so ``worldflux resume <run dir>`` continues exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldflux.agents import make_agent
from worldflux.core.exceptions import ConfigError
from worldflux.training.config import TrainerConfig, check_device
from worldflux.training.trainer import Trainer

RUN_FILE = "run.json"
TRAINER_FIELDS = {f.name for f in dataclasses.fields(TrainerConfig)}


@dataclass
class RunSpec:
    """Everything that defines a run, stored as ``run.json``."""

    model: str  # "family:preset"
    env: str  # an id for worldflux.envs.make_env
    trainer: dict[str, Any] = field(default_factory=dict)  # TrainerConfig fields
    model_overrides: dict[str, Any] = field(default_factory=dict)  # config fields of the model
    agent: dict[str, Any] = field(default_factory=dict)  # agent keyword options
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # make_env keyword options

    def trainer_config(self) -> TrainerConfig:
        return TrainerConfig.from_dict(self.trainer)


def parse_value(text: str) -> Any:
    """``key=value`` values: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(model: str, env: str, items: list[str]) -> RunSpec:
    """Sort ``key=value`` items: trainer fields, ``agent.x``, ``env.x``, else model config."""
    spec = RunSpec(model=model, env=env)
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override: expected key=value, got {item!r}")
        value = parse_value(raw)
        if key in TRAINER_FIELDS:
            spec.trainer[key] = value
        elif key.startswith("agent."):
            spec.agent[key[6:]] = value
        elif key.startswith("env."):
            spec.env_kwargs[key[4:]] = value
        else:
            spec.model_overrides[key.removeprefix("model.")] = value
    spec.trainer_config()  # validate early
    return spec


def default_run_dir(spec: RunSpec, root: str | Path = "runs") -> Path:
    """``<root>/<model>_<env>_<time stamp>``, with a suffix if two runs start in one second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{spec.model.replace(':', '-')}_{spec.env.replace('/', '-').replace(':', '-')}"
    path, n = Path(root) / f"{name}_{stamp}", 1
    while path.exists():
        n += 1
        path = Path(root) / f"{name}_{stamp}-{n}"
    return path


def check_new_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` for a new run: absent or an empty directory, else a one-line `ConfigError`.

    A second run written into an existing one would overwrite its run.json and interleave the
    checkpoints (``keep`` then deletes the newer run's), losing both; nothing is touched here.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir: {path} is a file; expected a new or empty directory")
    if path.is_dir() and any(path.iterdir()):
        if (path / RUN_FILE).is_file():
            raise ConfigError(
                f"run_dir: {path} already holds a run; continue it with `worldflux resume "
                f"{path}` (add --steps N to extend it) or choose another --run-dir"
            )
        raise ConfigError(f"run_dir: {path} is not empty; a new run needs a new or empty directory")
    return path


def env_factory(spec: RunSpec) -> Any:
    """index -> a fresh env of the run (seeded by the runner / evaluator)."""
    from worldflux.envs import make_env

    def make(_: int) -> Any:
        return make_env(spec.env, **spec.env_kwargs)

    return make


def make_replay(config: TrainerConfig, obs_space: Any, action_space: Any) -> Any:
    from worldflux.data.replay import Replay

    return Replay(
        config.replay_capacity, obs_space, action_space, num_envs=config.num_envs, seed=config.seed
    )


def build_trainer(spec: RunSpec, run_dir: str | Path) -> Trainer:
    """A fresh Trainer for `spec`; writes ``run.json`` into `run_dir`.

    Everything is validated (config, device, env options, agent options, model overrides) and
    built first; `run_dir` is only created once the run is known to start, so a rejected command
    leaves no directory behind. An existing non-empty `run_dir` is refused (`check_new_run_dir`).
    """
    check_new_run_dir(run_dir)
    trainer = _build(spec, run_dir)
    write_spec(spec, run_dir)
    return trainer


def write_spec(spec: RunSpec, run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / RUN_FILE, "w") as f:
        json.dump(dataclasses.asdict(spec), f, indent=2)


def _build(spec: RunSpec, run_dir: str | Path) -> Trainer:
    config = spec.trainer_config()
    check_device(config.device)  # before any model is moved there
    run_dir = Path(run_dir)
    env_fn = env_factory(spec)
    probe = env_fn(0)
    agent = make_agent(
        spec.model,
        probe.observation_space,
        probe.action_space,
        config.seed,
        config.device,
        spec.model_overrides,
        spec.agent,
    )
    replay = make_replay(config, probe.observation_space, probe.action_space)
    probe.close()
    return Trainer(agent, env_fn, replay, config, run_dir, dataclasses.asdict(spec))


def load_spec(run_dir: str | Path) -> RunSpec:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"run_dir: {run_dir} has no {RUN_FILE}; is it a worldflux run directory?")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if "collectors" in data:
        raise ConfigError(
            f"{path} is a collector run: resume it with `worldflux resume {run_dir}` or "
            "worldflux.distributed.trainer.resume_collector_trainer"
        )
    known = {f.name for f in dataclasses.fields(RunSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; expected some of {sorted(known)}")
    return RunSpec(**data)


def resume_trainer(run_dir: str | Path, **trainer_changes: Any) -> Trainer:
    """Rebuild the run in `run_dir` and load its latest checkpoint.

    `trainer_changes` may extend the run (``steps=...``) or change threads/device/progress.
    """
    spec = load_spec(run_dir)
    spec.trainer.update(trainer_changes)
    trainer = _build(spec, run_dir)
    trainer.restore()
    write_spec(spec, run_dir)  # the changes, once the checkpoint is known to load
    return trainer


def read_checkpoint(checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint's path and verified tree, from its directory, a run dir or
    ``<run>/checkpoints/latest`` (the latter two: the newest intact checkpoint, damaged newer
    ones skipped with a notice on stderr)."""
    from worldflux.training.checkpoint import CheckpointError, CheckpointManager, load_checkpoint

    path = Path(checkpoint)
    if path.name == "latest" and path.parent.name == "checkpoints" and not path.exists():
        path = path.parent.parent  # no such directory: the name stands for the newest one
    elif not (path / RUN_FILE).is_file():
        return path, load_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: run dir {path} does not exist")
    manager = CheckpointManager(path)
    if not manager.list():
        raise CheckpointError(f"checkpoint: run dir {path} has no checkpoints yet")
    return manager.load_latest()


def load_agent(checkpoint: str | Path, device: str = "cpu") -> tuple[Any, RunSpec]:
    """The agent stored in a checkpoint directory (or a run dir, or ``<run>/checkpoints/latest``:
    its newest intact checkpoint)."""
    check_device(device)
    _, tree = read_checkpoint(checkpoint)
    spec = RunSpec(**tree["run"])
    probe = env_factory(spec)(0)
    agent = make_agent(
        spec.model,
        probe.observation_space,
        probe.action_space,
        int(spec.trainer.get("seed", 0)),
        device,
        spec.model_overrides,
        spec.agent,
    )
    probe.close()
    agent.load_state_dict(tree["agent"])
    return agent, spec
