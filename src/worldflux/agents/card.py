"""`AgentCard`: what a pretrained agent documents about itself (env, training, measured return).

It is stored as config.json's ``"card"`` entry and rendered into the README.md model card.
`from_json` checks every field, so a damaged or foreign config.json is one `ConfigError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from worldflux.core.exceptions import ConfigError
from worldflux.core.model_card import describe_specs, render


@dataclass(frozen=True)
class EvalRecord:
    """A measured evaluation: ``worldflux eval`` with `episodes` and `seed` gave these."""

    return_mean: float  # mean real env return over the episodes (explore=False)
    return_std: float  # their standard deviation
    episodes: int  # episodes run
    seed: int  # `--seed` (eval env i is seeded seed + 1_000_003 + i)
    command: str  # the command that reproduces it


@dataclass(frozen=True)
class AgentCard:
    """The descriptive half of a pretrained agent's config.json."""

    name: str  # short name, e.g. "tdmpc2-1m-pendulum"
    preset: str | None = None  # the preset it was built from, e.g. "tdmpc2:1m"
    env_id: str | None = None  # the env it acts in (worldflux.envs.make_env id)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # make_env keyword arguments
    train_steps: int | None = None  # env steps (offline: updates) it was trained for
    train_command: str | None = None  # the command that trained it
    evaluation: EvalRecord | None = None  # the documented return
    description: str = ""  # a paragraph for the model card
    license: str = "mit"  # license of the weights

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> AgentCard:
        """The card in config.json's ``"card"`` entry; `where` names it in errors."""
        names = {f for f in cls.__dataclass_fields__}
        if not isinstance(doc, dict) or set(doc) != names:
            got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise ConfigError(f"{where}: expected keys {sorted(names)}, got {got}")
        _check(doc, where, {"name": str, "description": str, "license": str, "env_kwargs": dict})
        _check(doc, where, {"preset": str, "env_id": str, "train_command": str}, none_ok=True)
        _check(doc, where, {"train_steps": int}, none_ok=True)
        record = doc["evaluation"]
        if record is not None:
            keys = set(EvalRecord.__dataclass_fields__)
            if not isinstance(record, dict) or set(record) != keys:
                raise ConfigError(
                    f"{where}: evaluation: expected keys {sorted(keys)}, got {record!r}"
                )
            _check(record, f"{where}: evaluation", {"return_mean": float, "return_std": float})
            _check(record, f"{where}: evaluation", {"episodes": int, "seed": int, "command": str})
            record = EvalRecord(**record)
        return cls(**{**doc, "evaluation": record})


def _check(doc: dict[str, Any], where: str, types: dict[str, type], none_ok: bool = False) -> None:
    for key, kind in types.items():
        value = doc[key]
        if none_ok and value is None:
            continue
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{where}: {key}: expected {kind.__name__}, got {value!r}")


def agent_readme(card: AgentCard, specs: dict[str, Any], obs_spec: Any, action_spec: Any) -> str:
    """The README.md model card of a pretrained agent."""
    family = specs["config"]["family"]
    obs, action = describe_specs(obs_spec, action_spec)
    options = ", ".join(f"{k}={v}" for k, v in sorted(specs["options"].items())) or "defaults"
    about = [
        f"- family: `{family}`" + (f", preset `{card.preset}`" if card.preset else ""),
        f"- env: `{card.env_id}`" + (f" with `{card.env_kwargs}`" if card.env_kwargs else ""),
        f"- observations: {obs}; actions: {action}",
        f"- agent options: {options}",
        f"- training: {card.train_steps} steps" if card.train_steps is not None else "",
    ]
    sections = [("Agent", "\n".join([card.description, "", *[a for a in about if a]]))]
    if card.evaluation is not None:
        ev = card.evaluation
        sections.append((
            "Evaluation",
            f"Mean return **{ev.return_mean:.2f} +- {ev.return_std:.2f}** over {ev.episodes} "
            f"episodes (seed {ev.seed}, no exploration, real env returns), measured with\n\n"
            f"```bash\n{ev.command}\n```\n\nThe same command on the same CPU gives the same "
            "number; another CPU or torch build may differ slightly (float rounding).",
        ))  # fmt: skip
    if card.train_command:
        sections.append(("Training", f"```bash\n{card.train_command}\n```"))
    usage = (
        "```python\nimport worldflux\n\n"
        f"agent = worldflux.load_pretrained({json.dumps(card.name)})  # or a folder, or a Hub id\n"
        "action, state = agent.predict(obs, state)\n```"
    )
    sections.append(("Usage", usage))
    tags = ["reinforcement-learning", *([card.env_id] if card.env_id else [])]
    return render(f"worldflux {card.name}", family, tags, sections, card.license)
