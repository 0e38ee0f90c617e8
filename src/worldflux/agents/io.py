"""Saving and loading agents: ``agent.save(dir)``, `load_agent(dir)`, and the run checkpoints
the `Trainer` writes.

An agent directory is a checkpoint (`worldflux.training.checkpoint`: safetensors + JSON,
checksummed, nothing unpickled) whose tree holds

- ``"agent"``: ``agent.state_dict()`` (weights, optimizer states, extra state);
- ``"specs"``: `agent_specs(agent)`, everything needed to rebuild the agent without its env:
  ``{"version", "config": {"family", "fields"}, "obs_spec", "action_spec", "dtype",
  "options", "native_action_space"}``.

A Trainer checkpoint holds ``"agent"`` and ``"run"`` (the `RunConfig`), and ``"specs"`` when the
Trainer stores them; `load_agent` builds the run's env to learn the spaces only for a checkpoint
without ``"specs"`` (written before they were stored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from worldflux.agents import Agent, make_agent
from worldflux.agents.predict import space_from_json, space_to_json
from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.registry import config_from_json, config_to_json
from worldflux.core.spec import ActionSpec, ObsSpec
from worldflux.training.checkpoint import (
    TENSORS_FILE,
    TREE_FILE,
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
)
from worldflux.training.checkpoint_io import MANIFEST
from worldflux.training.config import check_device

if TYPE_CHECKING:
    from worldflux.training.run_config import RunConfig

SPECS_VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}  # fmt: skip
_SPEC_KEYS = {"version", "config", "obs_spec", "action_spec", "dtype", "options",
              "native_action_space"}  # fmt: skip


def agent_specs(agent: Agent) -> dict[str, Any] | None:
    """What rebuilds `agent` without its env (JSON-able), or None for an agent whose options
    are unknown (one not built by `make_agent`, e.g. a test stub)."""
    if agent.options is None:
        return None
    try:
        options = json.loads(json.dumps(agent.options))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"agent options: expected JSON values, got {agent.options!r}") from err
    model, space = agent.model, agent.native_action_space
    return {
        "version": SPECS_VERSION,
        "config": config_to_json(model.config),
        "obs_spec": model.obs_spec.to_json(),
        "action_spec": model.action_spec.to_json(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "options": options,
        "native_action_space": None if space is None else space_to_json(space),
    }


def agent_from_specs(specs: Any, where: str, device: torch.device | str = "cpu") -> Agent:
    """A fresh agent built from `agent_specs` data (weights not loaded); anything malformed is
    a `CheckpointError` naming `where`. The global RNG is left untouched."""
    if not isinstance(specs, dict) or set(specs) != _SPEC_KEYS:
        got = sorted(specs) if isinstance(specs, dict) else type(specs).__name__
        raise CheckpointError(f"{where}: expected specs with keys {sorted(_SPEC_KEYS)}, got {got}")
    if specs["version"] != SPECS_VERSION or specs["dtype"] not in _DTYPES:
        raise CheckpointError(
            f"{where}: expected specs version {SPECS_VERSION} and a float dtype, got version "
            f"{specs['version']!r}, dtype {specs['dtype']!r}"
        )
    if not isinstance(specs["options"], dict):
        raise CheckpointError(f"{where}: options: expected a dict, got {specs['options']!r}")
    try:
        config = config_from_json(specs["config"], f"{where}: config")
        obs_spec = ObsSpec.from_json(specs["obs_spec"], f"{where}: obs_spec")
        action_spec = ActionSpec.from_json(specs["action_spec"], f"{where}: action_spec")
        space = specs["native_action_space"]
        native = None if space is None else space_from_json(space, f"{where}: native_action_space")
        with torch.random.fork_rng(devices=[]):  # agents may draw from torch's RNG when built
            agent = make_agent(
                config,
                obs_spec,
                action_spec,
                device=device,
                agent_options=specs["options"],
                native_action_space=native,
            )
    except (ConfigError, SpecError) as err:
        raise CheckpointError(str(err)) from None
    if specs["dtype"] != "float32":
        agent.model.to(_DTYPES[specs["dtype"]])  # in place: the optimizers keep their params
    return agent


def save_agent(agent: Agent, path: str | os.PathLike[str]) -> Path:
    """`Agent.save`: write `agent` and its specs as a checkpoint directory at `path` (a new or
    empty directory, or an earlier save, which is replaced atomically)."""
    specs = agent_specs(agent)
    if specs is None:
        raise ConfigError(
            f"save: this {type(agent).__name__} was not built by worldflux.make_agent, so its "
            "options are unknown and load_agent could not rebuild it; build it with make_agent"
        )
    folder = Path(path)
    if folder.exists() and not _replaceable(folder):
        raise ConfigError(
            f"path: {folder} exists and is not a saved agent; expected a new or empty directory "
            "(or an earlier agent.save, which is replaced)"
        )
    return save_checkpoint(folder, {"specs": specs, "agent": agent.state_dict()})


def _replaceable(folder: Path) -> bool:
    """An empty directory, or one holding nothing but the files of a checkpoint."""
    return folder.is_dir() and {p.name for p in folder.iterdir()} <= {
        TREE_FILE,
        TENSORS_FILE,
        MANIFEST,
    }


def load_agent(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Agent:
    """The agent saved in `path`: a directory written by ``agent.save``, a Trainer checkpoint,
    a run directory or ``<run>/checkpoints/latest`` (their newest intact checkpoint). No env
    is built unless the checkpoint predates stored specs."""
    check_device(device)
    where, tree = read_checkpoint(path)
    agent = _build(tree, where, device)
    agent.load_state_dict(tree["agent"])
    return agent


def load_run_agent(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[Agent, RunConfig]:
    """`load_agent` for a run's checkpoint, with the run's `RunConfig` (its env, for eval)."""
    check_device(device)
    where, tree = read_checkpoint(path)
    config = _run_config(tree, where)
    agent = _build(tree, where, device)
    agent.load_state_dict(tree["agent"])
    return agent, config


def _build(tree: dict[str, Any], where: Path, device: torch.device | str) -> Agent:
    if "agent" not in tree:
        raise CheckpointError(f"checkpoint: {where} holds no agent")
    if tree.get("specs") is not None:
        return agent_from_specs(tree["specs"], f"checkpoint {where}: specs", device)
    if "run" not in tree:
        raise CheckpointError(f"checkpoint: {where} holds neither specs nor a run config")
    from worldflux.training.run import env_factory

    config = _run_config(tree, where)
    probe = env_factory(config)(0)  # a checkpoint from before specs were stored: ask the env
    try:
        return make_agent(
            config.model_name,
            probe.observation_space,
            probe.action_space,
            int(config.trainer.get("seed", 0)),
            device,
            config.model_options(),
            config.agent,
            getattr(probe, "native_action_space", None),
        )
    finally:
        probe.close()


def _run_config(tree: dict[str, Any], where: Path) -> RunConfig:
    from worldflux.training.run_config import RunConfig

    if not isinstance(tree.get("run"), dict):
        raise CheckpointError(
            f"checkpoint: {where} holds no run config (saved with agent.save?); this needs a "
            "run's checkpoint, which names its env"
        )
    try:
        return RunConfig.from_dict(tree["run"], f"checkpoint {where}: run")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def read_checkpoint(checkpoint: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """A checkpoint's path and verified tree, from its directory, a run dir or
    ``<run>/checkpoints/latest`` (the latter two: the newest intact checkpoint, damaged newer
    ones skipped with a notice on stderr)."""
    from worldflux.training.run_config import RUN_FILE

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
    from worldflux.training.restore import check_same_run
    from worldflux.training.run_config import read_run_file

    where, tree = manager.load_latest()
    check_same_run(tree, read_run_file(path).to_dict(), where)  # not one copied from another run
    return where, tree
