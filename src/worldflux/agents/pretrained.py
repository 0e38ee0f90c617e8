"""Pretrained agents: ``agent.save_pretrained(dir, card)``, `load_pretrained(name or dir or id)`.

A pretrained agent is a directory in the Hugging Face Hub layout:

- ``model.safetensors``: the world model's ``state_dict()`` (every agent's trained modules are its
  model; optimizer states are not shipped: fine-tune by training a fresh optimizer);
- ``config.json``: ``{"format": "worldflux-agent", "version": 1, "specs": {...}, "card": {...},
  "weights": {"file", "xxh3_64"}}``: ``specs`` rebuilds the agent without its env (family and
  config fields, obs/action specs, dtype, agent options, the env's action space:
  `worldflux.agents.io.agent_specs`), ``card`` documents it (`AgentCard`: env id, training,
  the measured return and the command that reproduces it);
- ``README.md``: the model card, rendered from both (documentation only).

`load_pretrained` takes the name of an agent shipped in the package (``worldflux pretrained``
lists them; the ``pretrained:`` prefix is optional), a directory, or a Hub repo id
``"owner/name[@revision]"`` (`worldflux.core.hub`). Nothing is unpickled: JSON and checksummed
safetensors only, and any problem is one `ConfigError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from worldflux.agents import Agent
from worldflux.agents.card import AgentCard, agent_readme
from worldflux.core.exceptions import ConfigError
from worldflux.core.pretrained import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_weights,
    read_config_json,
    weights_bytes,
    write_file,
)

FORMAT = "worldflux-agent"
VERSION = 1
PREFIX = "pretrained:"
SHIPPED = Path(__file__).resolve().parents[1] / "pretrained"  # package data: one folder each
_KEYS = {"format", "version", "specs", "card", "weights"}


def available() -> list[str]:
    """Names of the agents shipped in the package, sorted."""
    if not SHIPPED.is_dir():
        return []
    return sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG_FILE).is_file())


def save_pretrained(agent: Agent, path: str | os.PathLike[str], card: AgentCard) -> Path:
    """Write `agent` and `card` into the directory `path` (created if needed; the three files
    of an earlier save are replaced, other files left alone). -> the directory."""
    from worldflux.agents.io import agent_specs

    specs = agent_specs(agent)
    if specs is None:
        raise ConfigError(
            f"save_pretrained: this {type(agent).__name__} was not built by worldflux.make_agent, "
            "so its options are unknown; build it with make_agent"
        )
    if not isinstance(card, AgentCard):
        raise ConfigError(f"card: expected an AgentCard, got {type(card).__name__}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"path: {folder} is a file; expected a directory to save the agent in")
    data, weights = weights_bytes(agent.model)
    doc = {"format": FORMAT, "version": VERSION, "specs": specs, "card": card.to_json(),
           "weights": weights}  # fmt: skip
    readme = agent_readme(card, specs, agent.model.obs_spec, agent.model.action_spec)
    folder.mkdir(parents=True, exist_ok=True)
    write_file(folder / WEIGHTS_FILE, data)
    write_file(folder / CARD_FILE, readme.encode())
    write_file(folder / CONFIG_FILE, json.dumps(doc, indent=2).encode())  # last: names weights
    return folder


def locate(ref: str | os.PathLike[str]) -> Path:
    """The directory `ref` names: a shipped agent (``"name"`` or ``"pretrained:name"``), a
    directory, or a Hub repo id."""
    from worldflux.core.hub import is_hub_id, resolve_folder

    text = os.fspath(ref)
    name = text.removeprefix(PREFIX)
    if name in available():
        return SHIPPED / name
    if text.startswith(PREFIX) or not (Path(name).exists() or is_hub_id(name)):
        raise ConfigError(
            f"pretrained: unknown name {name!r}; available: {available()} (or give a directory "
            "written by save_pretrained, or a Hub id 'owner/name')"
        )
    return resolve_folder(name, [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE], "load_pretrained")


def read_card(ref: str | os.PathLike[str]) -> AgentCard:
    """The `AgentCard` of the pretrained agent `ref` (no weights loaded)."""
    folder = locate(ref)
    return AgentCard.from_json(_read_config(folder)["card"], f"{folder / CONFIG_FILE}: card")


def load_pretrained(ref: str | os.PathLike[str], device: torch.device | str = "cpu") -> Agent:
    """The agent `ref` names (see `locate`), on `device`, ready to act. Its card is on
    ``agent.card``. Building it leaves the global RNG untouched."""
    from worldflux.agents.io import agent_from_specs
    from worldflux.training.checkpoint import CheckpointError
    from worldflux.training.config import check_device

    check_device(device)
    folder = locate(ref)
    file = folder / CONFIG_FILE
    doc = _read_config(folder)
    card = AgentCard.from_json(doc["card"], f"{file}: card")
    try:
        agent = agent_from_specs(doc["specs"], f"{file}: specs", device)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    load_weights(agent.model, folder, doc["weights"])
    agent.model.to(device)
    agent.train(False)
    agent.card = card
    return agent


def _read_config(folder: Path) -> dict[str, Any]:
    """config.json parsed and its outer keys checked."""
    file = folder / CONFIG_FILE
    doc = read_config_json(folder, "load_pretrained")
    if isinstance(doc, dict) and doc.get("format") == "worldflux-model":
        raise ConfigError(
            f"load_pretrained: {file} holds a world model, not an agent; load it with "
            "worldflux.WorldModel.from_pretrained"
        )
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"load_pretrained: {file} is not a worldflux agent config (no format)")
    weights = doc.get("weights")
    if (
        doc.get("version") != VERSION
        or set(doc) != _KEYS
        or not (isinstance(weights, dict) and set(weights) == {"file", "xxh3_64"})
    ):
        raise ConfigError(
            f"load_pretrained: {file}: expected version {VERSION} with keys {sorted(_KEYS)} and "
            f"weights {{'file', 'xxh3_64'}}, got version {doc.get('version')!r} with keys "
            f"{sorted(doc)}"
        )
    return doc


def env_fn(card: AgentCard) -> Any:
    """index -> a fresh env of the card's env (for `worldflux.training.evaluate.evaluate`)."""
    if card.env_id is None:
        raise ConfigError(f"pretrained {card.name}: its card names no env; evaluate it yourself")
    from worldflux.envs import make_env_fn

    return make_env_fn(card.env_id, **card.env_kwargs)
