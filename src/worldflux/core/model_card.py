"""The README.md model card written beside a pretrained model or agent (Hugging Face layout).

A card is YAML front matter (``library_name``, ``license``, ``tags``: what the Hub indexes) and
Markdown sections. It documents; nothing reads it back: `from_pretrained` trusts only
config.json and model.safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LICENSE = "mit"  # the license worldflux and the weights it ships are released under
# The paper each family implements (the card's citation section).
PAPERS = {
    "dreamerv3": "Hafner, Pasukonis, Ba, Lillicrap. Mastering Diverse Domains through World "
    "Models. arXiv:2301.04104, 2023.",
    "tdmpc2": "Hansen, Su, Wang. TD-MPC2: Scalable, Robust World Models for Continuous Control. "
    "ICLR 2024, arXiv:2310.16828.",
    "jepa": "LeCun. A Path Towards Autonomous Machine Intelligence. OpenReview, 2022; SIGReg "
    "from Balestriero, LeCun. LeJEPA: Provable and Scalable Self-Supervised Learning Without "
    "the Heuristics. 2025.",
}
CITATION = """@software{worldflux,
  title = {worldflux: world models for reinforcement learning},
  year = {2026},
  note = {DreamerV3, TD-MPC2 and JEPA behind one API}
}"""


def describe_specs(obs_spec: Any, action_spec: Any) -> tuple[str, str]:
    """One line each for an `ObsSpec` and an `ActionSpec`: ``"obs (3,) float32"``,
    ``"discrete, 2 choices"``."""
    obs = ", ".join(
        f"{name} {tuple(f.shape)} {str(f.dtype).removeprefix('torch.')}" + " image" * f.is_image
        for name, f in obs_spec.fields.items()
    )
    kind = "discrete, {} choices" if action_spec.discrete else "continuous in [-1, 1], dim {}"
    return obs, kind.format(action_spec.dim)


def render(
    title: str,
    family: str,
    tags: Sequence[str],
    sections: Sequence[tuple[str, str]],
    license: str = LICENSE,
) -> str:
    """The card: front matter, ``# title``, then each ``(heading, markdown)`` section, then the
    license and citation sections."""
    tag_lines = "".join(f"  - {t}\n" for t in ("worldflux", "world-model", family, *tags))
    parts = [
        f"---\nlibrary_name: worldflux\nlicense: {license}\ntags:\n{tag_lines}---\n",
        f"# {title}\n",
    ]
    parts += [f"## {heading}\n\n{body.strip()}\n" for heading, body in sections]
    paper = PAPERS.get(family, "")
    parts.append(
        f"## License and citation\n\nLicense: {license.upper()}. The method: {paper}\n\n"
        f"```bibtex\n{CITATION}\n```\n"
    )
    return "\n".join(parts)


def model_readme(family: str, config_fields: dict[str, object], obs: str, action: str) -> str:
    """The card `WorldModel.save_pretrained` writes: what the model is and how to load it."""
    fields = ", ".join(f"{k}={v}" for k, v in sorted(config_fields.items()))
    usage = (
        "```python\nimport worldflux\n\nmodel = worldflux.WorldModel.from_pretrained(PATH)  "
        "# a folder or a Hub id 'owner/name'\n```"
    )
    return render(
        f"worldflux {family} world model",
        family,
        [],
        [
            ("Model", f"A `{family}` world model.\n\n- observations: {obs}\n- actions: {action}"),
            ("Config", f"`{fields}`"),
            ("Usage", usage),
        ],
    )
