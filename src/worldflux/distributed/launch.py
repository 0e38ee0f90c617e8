"""``worldflux train --nproc N``: the same command on N local data-parallel ranks, started
with torchrun (``python -m torch.distributed.run --standalone --nproc-per-node N -m worldflux``).

Each rank runs ``worldflux <argv>``; seeing torchrun's variables, the command joins the process
group (`ddp.init_distributed`) and builds its trainer under `DataParallel` sync. It is exactly
what ``torchrun --standalone --nproc-per-node N -m worldflux train ...`` does by hand (use that,
or torchrun's multi-node options, to span machines).
"""

from __future__ import annotations

import os
import subprocess
import sys


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``worldflux <argv>`` on `nproc` local ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "worldflux", *argv,
    ]  # fmt: skip


def run_local_ranks(nproc: int, argv: list[str]) -> int:
    """Run ``worldflux <argv>`` on `nproc` local ranks and wait; -> torchrun's exit code. Each
    rank uses one torch thread unless ``OMP_NUM_THREADS`` says otherwise."""
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(torchrun_command(nproc, argv), env=env)
