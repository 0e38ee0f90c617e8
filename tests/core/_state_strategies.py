"""Hypothesis strategies for random States (shared by codec and fuzz tests)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from worldflux.core.serialization.codec_header import DTYPES
from worldflux.core.state import State

ALL_DTYPES = sorted(set(DTYPES.values()), key=str)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bytes reinterpreted as `dtype` (NaNs and odd bit patterns included)."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(shape).prod()) if shape else 1
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(ALL_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    t = random_tensor(dtype, shape, draw(st.integers(0, 2**16)))
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # non-contiguous
    elif t.dim() >= 1 and t.shape[0] > 1 and draw(st.booleans()):
        t = t[::2]  # strided
    return t


json_leaf = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
json_values = st.recursive(
    json_leaf | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def states(draw: st.DrawFn, max_keys: int = 5) -> State:
    keys = draw(st.lists(st.text(min_size=1, max_size=8), max_size=max_keys, unique=True))
    keys = [k for k in keys if k != "__metadata__"]
    meta = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    return State({k: draw(tensors()) for k in keys}, meta)
