"""ObsSpec / ActionSpec / Batch: the contract's input checks and the one transition convention."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError
from worldflux.core.spec import SINGLE_KEY, ActionSpec, ObsSpec, map_obs, obs_batch_size
from worldflux.nn import simnorm, symexp, symlog, two_hot, two_hot_mean


def _batch(b: int = 2, t: int = 4, a: int = 3) -> Batch:
    is_last = torch.zeros(b, t, dtype=torch.bool)
    is_last[:, -1] = True
    return Batch(
        obs=torch.randn(b, t, 5),
        action=torch.zeros(b, t, a),
        reward=torch.zeros(b, t),
        is_first=torch.zeros(b, t, dtype=torch.bool),
        is_terminal=torch.zeros(b, t, dtype=torch.bool),
        is_last=is_last,
    )


def test_obs_spec_vector_image_dict() -> None:
    vec = ObsSpec.from_space(gym.spaces.Box(-1, 1, (5,), np.float32))
    assert not vec.is_dict and vec.fields[SINGLE_KEY].shape == (5,)
    hwc = ObsSpec.from_space(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8))
    assert hwc.fields[SINGLE_KEY].chw == (3, 64, 64) and hwc.fields[SINGLE_KEY].channels_last
    chw = ObsSpec.from_space(gym.spaces.Box(0, 255, (3, 64, 64), np.uint8))
    assert chw.fields[SINGLE_KEY].chw == (3, 64, 64) and not chw.fields[SINGLE_KEY].channels_last
    both = ObsSpec.from_space(
        gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
                "state": gym.spaces.Box(-1, 1, (4,), np.float32),
            }
        )
    )
    assert both.is_dict and both.image_keys == ["image"] and both.vector_keys == ["state"]


@pytest.mark.parametrize("batch_shape", [(), (3,), (5,)])
def test_obs_spec_checks_shapes(batch_shape: tuple[int, ...]) -> None:
    spec = ObsSpec.from_space(gym.spaces.Box(-1, 1, (5,), np.float32))
    out = spec.as_dict(torch.zeros(*batch_shape, 5), batch_dims=len(batch_shape))
    assert out[SINGLE_KEY].shape == (*batch_shape, 5)
    with pytest.raises(
        SpecError, match=r"obs: expected per-sample shape \(5,\) after .* got \(.*6,?\)"
    ):
        spec.as_dict(torch.zeros(*batch_shape, 6), batch_dims=len(batch_shape))


def test_obs_spec_errors_name_the_argument() -> None:
    img = ObsSpec.from_space(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8))
    with pytest.raises(SpecError, match="uint8"):
        img.as_dict(torch.zeros(2, 64, 64, 3), batch_dims=1)
    with pytest.raises(SpecError, match="expected a Tensor"):
        img.as_dict(np.zeros((2, 64, 64, 3), np.uint8), batch_dims=1)  # type: ignore[arg-type]
    d = ObsSpec.from_space(gym.spaces.Dict({"s": gym.spaces.Box(-1, 1, (4,), np.float32)}))
    with pytest.raises(SpecError, match="missing keys"):
        d.as_dict({"x": torch.zeros(2, 4)}, batch_dims=1)
    with pytest.raises(SpecError, match="obs_space"):
        ObsSpec.from_space(gym.spaces.Discrete(3))


BOX = gym.spaces.Box(-1, 1, (4,), np.float32)
ONE_KEY_DICT = gym.spaces.Dict({"obs": BOX})  # a Dict whose one key is the Box field's name


@pytest.mark.parametrize(
    ("space", "obs"),
    [
        (BOX, torch.zeros(2, 4)),
        (ONE_KEY_DICT, {"obs": torch.zeros(2, 4)}),
        (gym.spaces.Dict({"a": BOX, "b": BOX}), {"a": torch.zeros(2, 4), "b": torch.ones(2, 4)}),
    ],
)
def test_one_observation_form_round_trips_through_fields(space: gym.Space, obs: object) -> None:
    """An observation keeps the env's form: an array for a Box space, a dict for any Dict
    space (even one whose only key is the Box field's name); fields are a view of it."""
    spec = ObsSpec.from_space(space)
    fields = spec.fields_of(obs)
    assert sorted(fields) == sorted(spec.fields)
    back = spec.from_fields(fields)
    assert isinstance(back, dict) == isinstance(space, gym.spaces.Dict)
    assert isinstance(map_obs(lambda t: t + 1, obs), dict) == isinstance(obs, dict)
    assert obs_batch_size(obs) == 2  # type: ignore[arg-type]


def test_fields_of_refuses_the_other_form() -> None:
    box, one = ObsSpec.from_space(BOX), ObsSpec.from_space(ONE_KEY_DICT)
    with pytest.raises(
        SpecError, match=r"^x: expected one array .* got a dict with keys \['obs'\]"
    ):
        box.fields_of({"obs": torch.zeros(2, 4)}, "x")
    with pytest.raises(SpecError, match=r"^x: expected a dict with keys \['obs'\], got Tensor"):
        one.fields_of(torch.zeros(2, 4), "x")
    with pytest.raises(SpecError, match=r"obs: expected a batched Tensor"):
        obs_batch_size(torch.tensor(1.0))


def test_action_spec_discrete_and_box() -> None:
    disc = ActionSpec.from_space(gym.spaces.Discrete(4))
    onehot = disc.to_model(torch.tensor([0, 3]), batch_dims=1)
    assert torch.equal(onehot, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(SpecError, match=r"indices must lie in \[0, 4\)"):
        disc.to_model(torch.tensor([4]), batch_dims=1)
    box = ActionSpec.from_space(gym.spaces.Box(-2, 2, (2,), np.float32))
    assert box == ActionSpec(2, False)
    with pytest.raises(SpecError, match=r"action: expected shape \(<1 batch dims>, 2\)"):
        box.to_model(torch.zeros(3, 5), batch_dims=1)
    with pytest.raises(SpecError, match="MultiBinary or a 1-D Box"):
        ActionSpec.from_space(gym.spaces.Box(-1, 1, (2, 2), np.float32))


def test_action_spec_multi_discrete_and_multi_binary() -> None:
    md = ActionSpec.from_space(gym.spaces.MultiDiscrete([3, 2]))
    assert (md.dim, md.discrete, md.groups, md.multi_discrete) == (5, True, (3, 2), True)
    onehots = md.to_model(torch.tensor([[2, 0], [0, 1]]), batch_dims=1)
    assert onehots.tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]
    with pytest.raises(SpecError, match=r"indices must lie in \[0, 2\) \(entry 1\), got \[1, 2\]"):
        md.to_model(torch.tensor([[0, 2], [0, 1]]), batch_dims=1)
    with pytest.raises(SpecError, match=r"integer actions must have shape \(<1 batch dims>, 2\)"):
        md.to_model(torch.tensor([1, 0, 1]), batch_dims=1)
    mb = ActionSpec.from_space(gym.spaces.MultiBinary(3))
    assert (mb.dim, mb.discrete, mb.binary, mb.groups) == (3, False, True, ())
    assert mb.to_model(torch.tensor([[1, 0, 1]]), batch_dims=1).tolist() == [[1, -1, 1]]
    with pytest.raises(SpecError, match=r"bits must be 0 or 1"):
        mb.to_model(torch.tensor([[1, 0, 2]]), batch_dims=1)
    assert ActionSpec(4, True) == ActionSpec(4, True, (4,))  # Discrete: one group
    for spec in (md, mb, ActionSpec(4, True), ActionSpec(2, False)):
        assert ActionSpec.from_json(spec.to_json(), "x") == spec
    assert ActionSpec(4, True).to_json() == {"dim": 4, "discrete": True}  # older files alike
    with pytest.raises(SpecError, match=r"^x: expected .*'groups'.* got"):
        ActionSpec.from_json({"dim": 5, "discrete": True, "groups": [3, 3]}, "x")
    with pytest.raises(SpecError, match=r"ActionSpec: expected .*binary only when not discrete"):
        ActionSpec(3, True, binary=True)


def test_batch_convention_and_validation() -> None:
    batch = _batch().validate()
    assert batch.shape == (2, 4)
    bad = _batch()
    bad.is_terminal[0, 1] = True  # terminal but not last: impossible
    with pytest.raises(SpecError, match="is_terminal"):
        bad.validate()
    truncated = _batch()  # truncation: is_last without is_terminal is legal
    assert not bool(truncated.is_terminal.any()) and bool(truncated.is_last.any())
    truncated.validate()
    wrong = _batch()
    wrong.is_first = wrong.is_first.float()
    with pytest.raises(SpecError, match="batch.is_first"):
        wrong.validate()
    with pytest.raises(SpecError, match="batch.action"):
        Batch(**{**_batch().__dict__, "action": torch.zeros(2, 3, 3)}).validate()


def test_math_helpers_hand_values() -> None:
    x = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1e4])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)
    assert torch.allclose(symlog(torch.tensor([0.0, np.e - 1])), torch.tensor([0.0, 1.0]))
    bins = torch.linspace(-2, 2, 5)  # -2 -1 0 1 2
    w = two_hot(torch.tensor([0.25]), bins)
    assert torch.allclose(w, torch.tensor([[0, 0, 0.75, 0.25, 0]]))
    assert torch.allclose(two_hot(torch.tensor([9.0]), bins)[0, -1], torch.tensor(1.0))
    logits = torch.log(w.clamp_min(1e-12))
    assert torch.allclose(two_hot_mean(logits, bins), torch.tensor([0.25]), atol=1e-5)
    s = simnorm(torch.randn(3, 16), group=8).reshape(3, 2, 8)
    assert torch.allclose(s.sum(-1), torch.ones(3, 2))
