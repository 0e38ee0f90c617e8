"""``model.save_pretrained(dir)`` / ``WorldModel.from_pretrained(dir)``: safetensors + config.json,
identical outputs after the round trip, one clear error for anything damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldflux
from worldflux.core.exceptions import ConfigError
from worldflux.core.model import WorldModel

VECTOR = spaces.Box(-np.inf, np.inf, (3,), np.float32)
IMAGE_AND_VECTOR = spaces.Dict(
    {"image": spaces.Box(0, 255, (64, 64, 3), np.uint8), "state": VECTOR}
)
CASES = [
    ("tdmpc2:debug", VECTOR, spaces.Box(-1, 1, (2,), np.float32)),
    ("dreamerv3:debug", IMAGE_AND_VECTOR, spaces.Discrete(3)),
    ("jepa:debug", VECTOR, spaces.Box(-1, 1, (2,), np.float32)),
]


def outputs(model: WorldModel, obs, action: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encode, filter, imagine and decode from a fixed torch seed."""
    torch.manual_seed(11)
    with torch.no_grad():
        state = model.encode(obs)
        state = model.update(state, action, obs)
        nxt = model.transition(state, action)
        out = {f"state.{k}": v for k, v in nxt.tensors.items()}
        out.update({f"decode.{k}": v for k, v in model.decode(nxt).items()} if model.heads else {})
        out["features"] = model.features(nxt)
    return out


def sample_inputs(model: WorldModel, obs_space, action_space, n: int = 4):
    obs_space.seed(0)
    samples = [obs_space.sample() for _ in range(n)]
    if isinstance(obs_space, spaces.Dict):
        obs = {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in obs_space}
    else:
        obs = torch.as_tensor(np.stack(samples))
    action = torch.rand(n, model.action_spec.dim) * 2 - 1
    if model.action_spec.discrete:
        action = torch.eye(model.action_spec.dim)[torch.arange(n) % model.action_spec.dim]
    return obs, action


@pytest.mark.parametrize(("name", "obs_space", "action_space"), CASES)
def test_round_trip_gives_identical_outputs(name, obs_space, action_space, tmp_path: Path) -> None:
    pytest.importorskip(f"worldflux.models.{name.partition(':')[0]}")
    model = worldflux.create_world_model(name, obs_space, action_space, seed=0).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    rng = torch.get_rng_state()
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the global RNG alone
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config and loaded.obs_spec == model.obs_spec
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    obs, action = sample_inputs(model, obs_space, action_space)
    want, got = outputs(model, obs, action), outputs(loaded, obs, action)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    again = type(model).from_pretrained(tmp_path / "m")  # the family class works too
    assert type(again) is type(model)


def test_float64_models_stay_float64(tmp_path: Path) -> None:
    model = worldflux.create_world_model("tdmpc2:debug", VECTOR, spaces.Discrete(2), seed=0)
    model.double().save_pretrained(tmp_path / "m")
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert loaded.dtype == torch.float64
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = worldflux.create_world_model("tdmpc2:debug", VECTOR, spaces.Discrete(2), seed=0)
    return model.save_pretrained(tmp_path / "m")


def edit_config(folder: Path, change) -> None:
    doc = json.loads((folder / "config.json").read_text())
    change(doc)
    (folder / "config.json").write_text(json.dumps(doc))


def test_damaged_config_is_one_clear_error(saved: Path) -> None:
    text = (saved / "config.json").read_text()
    (saved / "config.json").write_text(text[: len(text) // 2])  # torn
    with pytest.raises(ConfigError, match=r"m/config.json is damaged: not valid JSON"):
        WorldModel.from_pretrained(saved)
    (saved / "config.json").write_text(text)
    edit_config(saved, lambda d: d["config"]["fields"].update(horizon=0))
    with pytest.raises(ConfigError, match=r"config.json: config: invalid tdmpc2 config.*horizon"):
        WorldModel.from_pretrained(saved)
    (saved / "config.json").write_text(text)
    edit_config(saved, lambda d: d["obs_spec"]["fields"]["obs"].update(dtype="pickle"))
    with pytest.raises(ConfigError, match=r"config.json: obs_spec\['obs'\]: expected"):
        WorldModel.from_pretrained(saved)
    (saved / "config.json").write_text(text)
    edit_config(saved, lambda d: d["config"]["fields"].update(latent_dim=64))  # weights differ
    with pytest.raises(ConfigError, match=r"model.safetensors does not fit config.json"):
        WorldModel.from_pretrained(saved)
    (saved / "config.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a worldflux model config"):
        WorldModel.from_pretrained(saved)


def test_damaged_or_missing_weights(saved: Path, tmp_path: Path) -> None:
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="model.safetensors is damaged: checksum"):
        WorldModel.from_pretrained(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.safetensors is missing"):
        WorldModel.from_pretrained(saved)
    with pytest.raises(ConfigError, match="nothing does not exist; expected a directory"):
        WorldModel.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        WorldModel.from_pretrained(tmp_path / "empty")


def test_from_pretrained_on_another_family_class_is_refused(saved: Path) -> None:
    from worldflux.models.dreamerv3 import DreamerV3

    with pytest.raises(ConfigError, match="holds a TDMPC2, not a DreamerV3"):
        DreamerV3.from_pretrained(saved)
