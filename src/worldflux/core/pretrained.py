"""`save_pretrained` / `load_pretrained`: a world model as a directory anyone can load.

The directory is in the Hugging Face Hub layout:

- ``model.safetensors``: the model's ``state_dict()`` (weights and persistent buffers);
- ``config.json``: ``{"format": "worldflux-model", "version": 1, "config": {"family", "fields"},
  "obs_spec", "action_spec", "dtype", "weights": {"file", "xxh3_64"}}``, everything needed to
  rebuild the model without its preset name or an environment;
- ``README.md``: a model card (`worldflux.core.model_card`), documentation only.

`from_pretrained` takes such a directory or a Hub repo id ``"owner/name"`` (fetched through
`worldflux.core.hub`, the optional ``hub`` extra). Agents use the same layout with more in
config.json (`worldflux.agents.pretrained`).

Nothing is unpickled: the weights are parsed by safetensors, the rest is JSON, and the weights'
checksum is checked before they are parsed. Any problem (a missing or damaged file, a foreign
config, weights that do not fit) is one `ConfigError` naming the file. The methods users call
are `WorldModel.save_pretrained(dir)` and `WorldModel.from_pretrained(dir)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.model import WorldModel
from worldflux.core.spec import ActionSpec, ObsSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FORMAT = "worldflux-model"
VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}  # fmt: skip


def save_pretrained(model: WorldModel, path: str | os.PathLike[str]) -> Path:
    """Write `model` into the directory `path` (created if needed; files of an earlier save
    there are replaced, other files left alone). -> the directory."""
    from worldflux.core.model_card import describe_specs, model_readme
    from worldflux.core.registry import config_to_json

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"path: {folder} is a file; expected a directory to save the model in")
    data, weights = weights_bytes(model)
    config_json = config_to_json(model.config)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_json,
        "obs_spec": model.obs_spec.to_json(),
        "action_spec": model.action_spec.to_json(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "weights": weights,
    }
    card = model_readme(
        config_json["family"],
        config_json["fields"],
        *describe_specs(model.obs_spec, model.action_spec),
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_file(folder / WEIGHTS_FILE, data)
    write_file(folder / CARD_FILE, card.encode())
    write_file(folder / CONFIG_FILE, json.dumps(config, indent=2).encode())  # last: names weights
    return folder


def weights_bytes(model: WorldModel) -> tuple[bytes, dict[str, str]]:
    """`model`'s state_dict as safetensors bytes, and config.json's ``"weights"`` entry for
    them (file name and xxh3_64 checksum)."""
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    data = safetensors_bytes(weights)
    return data, {"file": WEIGHTS_FILE, "xxh3_64": xxhash.xxh3_64_hexdigest(data)}


def write_file(file: Path, data: bytes) -> None:
    """Replace `file` with `data` atomically (a crash leaves the old file or the new one)."""
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def load_pretrained(
    path: str | os.PathLike[str],
    device: torch.device | str | None = None,
    cls: type[WorldModel] = WorldModel,
) -> WorldModel:
    """The model saved by `save_pretrained` in `path` (a directory, or a Hub repo id
    ``"owner/name[@revision]"``), on `device`, in eval mode.

    `cls` (what ``from_pretrained`` was called on) must be the saved model's class or a base of
    it. Building the model leaves the global RNG untouched.
    """
    from worldflux.core.hub import resolve_folder
    from worldflux.core.registry import config_from_json, create_world_model

    folder = resolve_folder(path, [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE], "from_pretrained")
    file = folder / CONFIG_FILE
    doc = _read_config(folder, file)
    try:
        config = config_from_json(doc["config"], f"{file}: config")
        obs_spec = ObsSpec.from_json(doc["obs_spec"], f"{file}: obs_spec")
        action_spec = ActionSpec.from_json(doc["action_spec"], f"{file}: action_spec")
    except SpecError as err:
        raise ConfigError(str(err)) from None
    model = create_world_model(config, obs_spec, action_spec, seed=0)  # seed: RNG left alone
    if not isinstance(model, cls):
        raise ConfigError(
            f"from_pretrained: {folder} holds a {type(model).__name__}, not a {cls.__name__}; "
            f"load it with WorldModel.from_pretrained or {type(model).__name__}.from_pretrained"
        )
    model = model.to(_DTYPES[doc["dtype"]])
    load_weights(model, folder, doc["weights"])
    return (model.to(device) if device is not None else model).eval()


def read_config_json(folder: Path, caller: str) -> Any:
    """`folder`'s config.json parsed (untrusted bytes: JSON only); a one-line `ConfigError`
    starting with `caller` when it is missing or damaged."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(
            f"{caller}: {folder} has no {CONFIG_FILE}; expected a directory written by "
            "save_pretrained"
        )
    try:
        return json.loads(file.read_bytes())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{caller}: {file} is damaged: not valid JSON ({err})") from err


def _read_config(folder: Path, file: Path) -> dict[str, Any]:
    """config.json parsed and its outer keys checked."""
    doc = read_config_json(folder, "from_pretrained")
    keys = {"format", "version", "config", "obs_spec", "action_spec", "dtype", "weights"}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"from_pretrained: {file} is not a worldflux model config (no format)")
    if doc.get("version") != VERSION or set(doc) != keys:
        raise ConfigError(
            f"from_pretrained: {file}: expected version {VERSION} with keys {sorted(keys)}, got "
            f"version {doc.get('version')!r} with keys {sorted(doc)}"
        )
    weights = doc["weights"]
    if doc["dtype"] not in _DTYPES or not (
        isinstance(weights, dict) and set(weights) == {"file", "xxh3_64"}
    ):
        raise ConfigError(
            f"from_pretrained: {file}: expected dtype in {sorted(_DTYPES)} and weights "
            f"{{'file', 'xxh3_64'}}, got dtype {doc['dtype']!r}, weights {weights!r}"
        )
    return doc


def load_weights(model: WorldModel, folder: Path, weights: dict[str, Any]) -> None:
    """Load the weights file config.json's `weights` entry names (checksum checked first,
    then parsed by safetensors) into `model`; any problem is one `ConfigError`."""
    name = weights["file"]
    if not isinstance(name, str) or Path(name).name != name:  # no paths out of the folder
        raise ConfigError(f"from_pretrained: {folder / CONFIG_FILE}: bad weights file {name!r}")
    file = folder / name
    try:
        data = file.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"from_pretrained: {file} is missing") from err
    digest = xxhash.xxh3_64_hexdigest(data)
    if digest != weights["xxh3_64"]:
        raise ConfigError(
            f"from_pretrained: {file} is damaged: checksum {digest}, {CONFIG_FILE} says "
            f"{weights['xxh3_64']}"
        )
    try:
        state = safetensors_load(data)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise ConfigError(f"from_pretrained: {file} does not fit {CONFIG_FILE} ({first})") from err
