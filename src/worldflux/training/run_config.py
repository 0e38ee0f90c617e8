"""`RunConfig`: everything that defines a run, in four sections, stored as ``run.json``.

- ``model``: ``name`` (``"family:preset"``) and fields of the family's config (``horizon``, ``lr``)
- ``agent``: keyword options of the family's agent (``batch_size``, ``seq_len``, ``act``)
- ``trainer``: `TrainerConfig` fields (``steps``, ``seed``, ``updates_per_step``, ``dataset``)
- ``env``: ``id`` (an id for `worldflux.envs.make_env`; absent for offline data without an
  env), ``vector`` (``sync`` or ``async``: where the copies step) and `make_env` options
  (``action_repeat``, ``image``, ``max_episode_steps``)

plus ``collectors``: ``{}`` for a run in one process, else ``{"num_collectors": N,
"start_method": ...}``, what ``worldflux resume`` restarts them with.

Overrides are ``key=value`` items (`parse_overrides`): ``section.key`` sets that section's key;
a bare key is set in the one section that knows it (``steps`` -> trainer, ``batch_size`` ->
agent, ``horizon`` -> model, ``action_repeat`` -> env); a key two sections know must be
qualified, and an unknown one is a `ConfigError` with the closest known keys ("did you mean
agent.batch_size?"). Values are JSON when they parse (numbers, true/false, lists), else
strings. Qualified keys are checked when the run is built (the agent, env and model each name
their valid options).

``run.json`` files written before the sections (keys ``model``, ``env``, ``trainer``,
``model_overrides``, ``agent``, ``env_kwargs`` and ``collectors``) are converted when read.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldflux.core.exceptions import ConfigError
from worldflux.training.config import TrainerConfig

RUN_FILE = "run.json"
SECTIONS = ("model", "agent", "trainer", "env")
_OLD_KEYS = {"model", "env", "trainer", "model_overrides", "agent", "env_kwargs", "collectors"}


@dataclass
class RunConfig:
    """The sections of a run (see the module docstring); each a dict of JSON values."""

    model: dict[str, Any]  # "name": "family:preset", then fields of the family's config
    env: dict[str, Any] = field(default_factory=dict)  # "id": env id, then make_env options
    agent: dict[str, Any] = field(default_factory=dict)  # the agent's keyword options
    trainer: dict[str, Any] = field(default_factory=dict)  # TrainerConfig fields
    collectors: dict[str, Any] = field(default_factory=dict)  # {} or num_collectors, start_method

    @classmethod
    def of(cls, model: str, env: str | None = None, **sections: dict[str, Any]) -> RunConfig:
        """``RunConfig.of("tdmpc2:1m", "Pendulum-v1", trainer={"steps": 5000})``; the other
        sections are keyword arguments too (``model_options=`` and ``env_options=`` for the
        model and env sections without their name and id)."""
        env_section = {} if env is None else {"id": env}
        return cls(
            model={"name": model, **sections.pop("model_options", {})},
            env={**env_section, **sections.pop("env_options", {})},
            **sections,
        )

    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def env_id(self) -> str | None:
        return self.env.get("id")

    def model_options(self) -> dict[str, Any]:
        """The model section without its name: config fields for `create_world_model`."""
        return {k: v for k, v in self.model.items() if k != "name"}

    def env_options(self) -> dict[str, Any]:
        """The env section without its id and ``vector``: keyword options for `make_env`."""
        return {k: v for k, v in self.env.items() if k not in ("id", "vector")}

    @property
    def env_vector(self) -> str:
        """How the run's env copies are stepped: ``"sync"`` (in turn, in the trainer's process;
        the default) or ``"async"`` (one worker process each; `worldflux.training.env_copies`)."""
        return str(self.env.get("vector", "sync"))

    def trainer_config(self) -> TrainerConfig:
        return TrainerConfig.from_dict(self.trainer)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: Any, where: str = "run config") -> RunConfig:
        """Read what `to_dict` wrote, or a pre-section ``RunSpec`` dict (converted)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if isinstance(data.get("model"), str):
            data = _from_old(data, where)
        known = {f.name for f in dataclasses.fields(RunConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
        for name in known:
            if name in data and not isinstance(data[name], dict):
                raise ConfigError(f"{where}: {name}: expected an object, got {data[name]!r}")
        if not isinstance(data.get("model", {}).get("name"), str):
            raise ConfigError(f"{where}: model.name: expected 'family:preset', got nothing")
        return RunConfig(**{k: dict(v) for k, v in data.items()})


def _from_old(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``RunSpec`` dict (before the sections) as sections. The agent's ``train_ratio`` (once
    a DreamerV3 agent option) is the trainer's now; the trainer's own value wins, as it did."""
    unknown = sorted(set(data) - _OLD_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(_OLD_KEYS)}")
    agent, trainer = dict(data.get("agent") or {}), dict(data.get("trainer") or {})
    if "train_ratio" in agent:
        ratio = agent.pop("train_ratio")
        trainer.setdefault("train_ratio", ratio)
    collectors = data.get("collectors") or {}
    if isinstance(collectors, int) and not isinstance(collectors, bool):
        collectors = {"num_collectors": collectors}  # a bare count
    env = {} if data.get("env") is None else {"id": data["env"]}
    return {
        "model": {"name": data["model"], **(data.get("model_overrides") or {})},
        "env": {**env, **(data.get("env_kwargs") or {})},
        "agent": agent,
        "trainer": trainer,
        "collectors": collectors,
    }


def model_name(run: Any) -> str | None:
    """The model a run dict (new or old layout, e.g. a checkpoint's ``"run"``) trains."""
    if not isinstance(run, dict):
        return None
    model = run.get("model")
    name = model.get("name") if isinstance(model, dict) else model
    return name if isinstance(name, str) else None


# --- run.json ----------------------------------------------------------------------------------


def read_run_file(run_dir: str | Path) -> RunConfig:
    """The `RunConfig` in ``run_dir/run.json`` (an old layout converted)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"run_dir: {run_dir} has no {RUN_FILE}; is it a worldflux run directory?")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    config = RunConfig.from_dict(data, str(path))
    info = config.collectors
    if info and not (isinstance(info.get("num_collectors"), int) and info["num_collectors"] >= 1):
        raise ConfigError(
            f"{path}: collectors must be {{'num_collectors': N >= 1, 'start_method': ...}}, "
            f"got {info!r}"
        )
    return config


def write_run_file(config: RunConfig, run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2))


# --- overrides ---------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """``key=value`` values: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(model: str, env: str | None, items: list[str]) -> RunConfig:
    """A `RunConfig` for `model` on `env` with ``key=value`` `items` (see the module docstring);
    the trainer section is validated here, the others when the run is built."""
    config = RunConfig.of(model, env)
    apply_overrides(config, items)
    return config


def apply_overrides(config: RunConfig, items: list[str]) -> None:
    """Set ``key=value`` `items` in `config`'s sections (see the module docstring)."""
    known: dict[str, list[str]] | None = None
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override: expected key=value, got {item!r}")
        section, dot, name = key.partition(".")
        if not (dot and section in SECTIONS and name):
            known = known if known is not None else known_keys(config.model_name)
            section, name = resolve_key(key, known), key
        getattr(config, section)[name] = parse_value(raw)
    config.trainer_config()  # validate early


def known_keys(model: str) -> dict[str, list[str]]:
    """The keys each section knows for `model`, for bare-key lookup (env: `make_env`'s own
    options; an env's further options need ``env.``)."""
    from worldflux.agents import AGENTS
    from worldflux.core.registry import resolve
    from worldflux.envs import make_env

    family, preset = resolve(model)
    agent_cls = AGENTS[model.partition(":")[0]]()
    agent = [p for p in inspect.signature(agent_cls).parameters if p not in ("model", "seed")]
    env = [p.name for p in inspect.signature(make_env).parameters.values()
           if p.kind is p.KEYWORD_ONLY and p.name != "seed"]  # fmt: skip
    return {
        "model": [f.name for f in dataclasses.fields(family.presets[preset])],
        "agent": agent,
        "trainer": [f.name for f in dataclasses.fields(TrainerConfig)],
        "env": [*env, "render_mode", "max_episode_steps", "vector"],
    }


def resolve_key(key: str, known: dict[str, list[str]]) -> str:
    """The one section that knows the bare `key`; a `ConfigError` when none or several do."""
    owners = [s for s in SECTIONS if key in known[s]]
    if len(owners) == 1:
        return owners[0]
    if owners:
        choices = " or ".join(f"{s}.{key}" for s in owners)
        raise ConfigError(f"{key}: ambiguous, {' and '.join(owners)} both have it; write {choices}")
    qualified = [f"{s}.{k}" for s in SECTIONS for k in known[s]]
    close = difflib.get_close_matches(key, [q.partition(".")[2] for q in qualified], 3, 0.6)
    hint = [q for q in qualified if q.partition(".")[2] in close]
    suggestion = f"; did you mean {' or '.join(hint)}?" if hint else ""
    raise ConfigError(
        f"{key}: not a key of any section (model, agent, trainer, env){suggestion} Qualify "
        f"options of a particular env as env.<name>"
    )
