"""The larger mutation fuzz run of `State.deserialize` (the test suite runs 12,000 cases).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_state.py [--cases 1000000] [--seed 0]

Mutates small valid payloads (bit flips, byte writes, truncations, extensions, splices, header
length rewrites, header insertions/deletions; see tests/core/test_codec_fuzz.py) and also
`State.from_shared_memory` on corrupted segments. Any exception other than `StateError` is a
bug: the payload is written to benchmarks/results/fuzz_crash_<n>.bin and the run exits 1.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "core"))

from test_codec_fuzz import mutate, seeds  # noqa: E402

from worldflux.core import shm  # noqa: E402
from worldflux.core.exceptions import StateError  # noqa: E402
from worldflux.core.state import State  # noqa: E402

NAMESPACE = "fuzz"


def fuzz_bytes(rng: random.Random, cases: int, crashes: list[bytes]) -> dict[str, int]:
    pool = seeds()
    counts = {"ok": 0, "state_error": 0, "other": 0}
    for _ in range(cases):
        data = mutate(rng, rng.choice(pool), pool)
        if rng.random() < 0.2:  # stack a second mutation
            data = mutate(rng, data if len(data) > 8 else rng.choice(pool), pool)
        try:
            State.deserialize(data, copy=rng.random() < 0.5) if rng.random() < 0.5 else (
                State.deserialize(bytearray(data), copy=False)
            )
            counts["ok"] += 1
        except StateError:
            counts["state_error"] += 1
        except Exception:  # noqa: BLE001 - the point: anything else is a finding
            counts["other"] += 1
            crashes.append(data)
            traceback.print_exc()
    return counts


def fuzz_segments(rng: random.Random, cases: int) -> dict[str, int]:
    """Corrupt a published segment in place, then attach to it."""
    counts = {"ok": 0, "state_error": 0, "other": 0}
    pool = [State.deserialize(p) for p in seeds()]
    for _ in range(cases):
        desc = rng.choice(pool).to_shared_memory(NAMESPACE, checksum=rng.random() < 0.5)
        path = "/dev/shm/" + desc["name"][1:]
        raw = bytearray(Path(path).read_bytes())
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        Path(path).write_bytes(bytes(raw))
        try:
            s = State.from_shared_memory(desc, copy=rng.random() < 0.5)
            counts["ok"] += 1
            if s._attachment is not None:
                s.close_shared_memory(unlink=False)
        except StateError:
            counts["state_error"] += 1
        except Exception:  # noqa: BLE001
            counts["other"] += 1
            traceback.print_exc()
        shm.unlink_segment(desc["name"])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    crashes: list[bytes] = []
    t0 = time.perf_counter()
    counts = fuzz_bytes(rng, args.cases, crashes)
    t1 = time.perf_counter()
    seg_counts = fuzz_segments(rng, args.segments)
    t2 = time.perf_counter()
    shm.cleanup_namespace(NAMESPACE, include_live=True)
    print(f"bytes:    {args.cases} cases in {t1 - t0:.1f} s: {counts}")
    print(f"segments: {args.segments} cases in {t2 - t1:.1f} s: {seg_counts}")
    for i, data in enumerate(crashes[:20]):
        out = ROOT / "benchmarks" / "results" / f"fuzz_crash_{i}.bin"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return 1 if counts["other"] or seg_counts["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
