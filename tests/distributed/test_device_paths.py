"""The data paths that cross a device boundary, on every available device (``device`` fixture:
CPU always, CUDA where a GPU exists): a device State serialized and published to shared memory,
replay batches sampled onto the device (pinned host memory on CUDA), and NCCL gradient
all-reduce. The CUDA-graph compile mode is in `tests/agents/test_devices.py`;
`benchmarks/gpu_check.sh` runs the CUDA cases of both (``-m cuda``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from worldflux.core.state import State
from worldflux.data.replay import Replay
from worldflux.envs.base import StepBatch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _state(device: torch.device) -> State:
    g = torch.Generator().manual_seed(0)
    return State(
        {
            "deter": torch.randn(3, 16, generator=g),
            "stoch": torch.randint(0, 7, (3, 4, 8), generator=g),
            "logits": torch.randn(3, 4, 8, generator=g).to(torch.bfloat16),
        }
    ).to(device)


def test_device_state_serializes_and_publishes_its_values(device: torch.device) -> None:
    state = _state(device)
    expected = {k: v.cpu() for k, v in state.tensors.items()}
    restored = State.deserialize(state.serialize())
    descriptor = state.to_shared_memory(namespace="devpath")
    try:
        attached = State.from_shared_memory(descriptor, copy=True)
        for got in (restored, attached, attached.to(device).to("cpu")):
            for key, value in expected.items():
                assert got.tensors[key].dtype == value.dtype, key
                assert torch.equal(got.tensors[key].cpu(), value), key
    finally:
        state.close_shared_memory(unlink=True)


def test_replay_samples_onto_the_device(device: torch.device) -> None:
    obs_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    batches = []
    for _ in range(2):  # the same seed samples the same windows wherever they go
        replay = Replay(200, obs_space, act_space, num_envs=2, seed=0)
        g = np.random.default_rng(0)
        for t in range(50):
            replay.add(
                StepBatch(
                    obs=g.uniform(-1, 1, (2, 3)).astype(np.float32),
                    action=g.uniform(-1, 1, (2, 2)).astype(np.float32),
                    reward=g.standard_normal(2).astype(np.float32),
                    is_first=np.full(2, t % 10 == 0),
                    is_terminal=np.zeros(2, bool),
                    is_last=np.full(2, t % 10 == 9),
                )
            )
        batches.append(replay)
    on_device = batches[0].sample(4, 8, device=device)
    on_cpu = batches[1].sample(4, 8)
    assert on_device.obs.device.type == device.type and on_device.is_first.dtype == torch.bool
    on_device.validate()
    assert torch.equal(on_device.obs.cpu(), on_cpu.obs)
    assert torch.equal(on_device.reward.cpu(), on_cpu.reward)


def _nccl_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """One NCCL rank: a guarded step on rank-dependent data; writes this rank's weights."""
    import torch.distributed as dist

    from worldflux.agents.base import guarded_step
    from worldflux.distributed import ddp
    from worldflux.distributed.data_parallel import GradientAllReduce
    from worldflux.distributed.gradsync import gradient_sync

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = ddp.DistContext(rank, world, rank, "nccl", torch.device("cuda", rank))
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.full((2, 4), float(rank + 1), device="cuda")
        with gradient_sync(GradientAllReduce(ctx)):
            ok, _ = guarded_step(model(x).sum(), opt, model.parameters(), None)
        torch.save({"ok": bool(ok), "w": model.weight.detach().cpu()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@needs_cuda
def test_nccl_all_reduce_steps_every_rank_on_the_rank_mean_gradient(tmp_path: Path) -> None:
    world = min(2, torch.cuda.device_count())  # 1 rank on a one-GPU machine, else 2
    init = Path(tempfile.mkdtemp()) / "init"
    ctx = mp.start_processes(_nccl_rank, (world, str(init), str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("NCCL ranks did not finish within 180 s")
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 1)
    # d(sum of 2 rows)/dW = 2 * x per rank; the rank mean of x = mean(1..world)
    mean_x = sum(range(1, world + 1)) / world
    expected = ref.weight.detach() - 0.1 * 2 * mean_x
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["ok"]
        torch.testing.assert_close(got["w"], expected)
