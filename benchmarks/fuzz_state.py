"""The long mutation fuzz runs of `State.deserialize` and `State.from_shared_memory`.

Run one mode per process (the test suite runs 12,000 byte cases):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_state.py --mode bytes --cases 1000000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_state.py --mode segments --cases 1000000

`bytes` mutates small valid payloads (bit flips, byte writes, truncations, extensions,
splices, header length rewrites, header insertions/deletions, zero-size shapes with huge
dims; tests/core/test_codec_fuzz.py), one or two mutations stacked, and parses them copied
or zero-copy. `segments` attaches with `from_shared_memory` to segments whose contents were
mutated the same way or bit-flipped in place (generation word and slack included), to
resized segments, and through forged descriptors (names of other or non-worldflux segments,
path tricks, wrong sizes, types or generations, missing or extra keys).

Only `StateError` and its subclasses may escape; anything else is a finding: its input goes
to benchmarks/results/fuzz_crash_<mode>_<n>.bin (or .json) and the run exits 1. Outcomes by
error type, wall time and rate are printed and added to the mode's runs in
benchmarks/results/fuzz_state.json (--no-record to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests" / "core"))

from test_codec_fuzz import mutate, seeds  # noqa: E402

from worldflux.core.exceptions import StateError  # noqa: E402
from worldflux.core.serialization import shm  # noqa: E402
from worldflux.core.state import State  # noqa: E402

NAMESPACE = f"fuzz_{os.getpid()}"
OTHER_NAMESPACE = f"fuzz-other_{os.getpid()}"


def run_case(attempt: Callable[[], Any], counts: Counter, finding: Callable[[], None]) -> None:
    """Count the outcome of one case: "ok", the StateError subclass raised, or a finding."""
    try:
        attempt()
        counts["ok"] += 1
    except StateError as err:
        counts[type(err).__name__] += 1
    except Exception as err:  # noqa: BLE001 - the point: anything else is a finding
        counts[f"FINDING {type(err).__name__}"] += 1
        traceback.print_exc()
        finding()


def fuzz_bytes(rng: random.Random, cases: int, crashes: list[Any]) -> Counter:
    pool = seeds()
    counts: Counter = Counter()
    for i in range(cases):
        data = mutate(rng, rng.choice(pool), pool)
        if rng.random() < 0.2:  # stack a second mutation
            data = mutate(rng, data, pool)
        how = rng.randrange(3)  # bytes copied, bytearray copied, bytearray zero-copy
        buf = data if how == 0 else bytearray(data)

        def attempt(buf: Any = buf, how: int = how) -> None:
            State.deserialize(buf, copy=how < 2)

        run_case(attempt, counts, lambda data=data: crashes.append(data))
        progress("bytes", i, cases, counts)
    return counts


# -- shared memory -----------------------------------------------------------------------------

FORGED_NAMES = [
    "/etc_passwd",
    "/worldflux_../../etc/passwd_1_0_deadbeef",
    "/worldflux_a/b_1_0_deadbeef",
    "worldflux_fuzz_1_0_deadbeef",
    "/worldflux__1_0_deadbeef",
    "/worldflux_" + "x" * 65 + "_1_0_deadbeef",
    "/worldflux_fuzz_1_0_deadbeef\n",
    "/worldflux_fuzz_1_0_DEADBEEF",
    "/worldflux_fuzz_1_0_deadbeef",  # well formed, no such segment
    "/dev/shm/worldflux_fuzz_1_0_deadbeef",
    "",
    7,
    None,
]
BAD_NUMBERS = [-1, 0, 1, 7, 8, 2**63 - 1, 2**63, 2**64, True, 1.5, "12", None, [8]]


def raw_segment(payload: bytes, rng: random.Random) -> dict[str, Any]:
    """A segment holding `payload` as-is, and a descriptor that matches it where it can."""
    name, mm = shm.create(NAMESPACE, 8 + len(payload) + rng.choice((0, 0, 8, 4096)))
    mm[8 : 8 + len(payload)] = payload
    capacity = len(mm)
    mm.close()
    claimed = int.from_bytes(payload[:8].ljust(8, b"\0"), "little")
    header_len = claimed if 8 + claimed <= len(payload) else rng.randrange(len(payload) + 1)
    return {
        "format": shm.DESCRIPTOR_FORMAT,
        "name": name,
        "size": len(payload),
        "capacity": capacity,
        "header_len": header_len,
        "generation": 0,
    }


def flip_in_place(desc: dict[str, Any], rng: random.Random) -> None:
    """Flip 1-3 bits anywhere in the segment: generation word, payload or slack."""
    fd = shm.open_segment(desc["name"], os.O_RDWR)
    try:
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(desc["capacity"])
            byte = os.pread(fd, 1, at)[0] ^ (1 << rng.randrange(8))
            os.pwrite(fd, bytes([byte]), at)
    finally:
        os.close(fd)


def resize(desc: dict[str, Any], rng: random.Random) -> None:
    """Grow or shrink the segment file (perhaps mapped by a held attachment, never touched
    again); the descriptor may follow."""
    size = max(0, desc["capacity"] + rng.choice((-4096, -9, -1, 1, 8, 4096)))
    fd = shm.open_segment(desc["name"], os.O_RDWR)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    if rng.random() < 0.5:
        desc["capacity"] = size


def forge(desc: dict[str, Any], rng: random.Random, live: list[str]) -> Any:
    """A descriptor with one field (or its shape) forged."""
    forged: Any = dict(desc)
    kind = rng.randrange(6)
    if kind == 0:
        forged["name"] = rng.choice(FORGED_NAMES + live)
    elif kind == 1:
        key = rng.choice(("size", "capacity", "header_len", "generation"))
        value = rng.choice(BAD_NUMBERS + [desc[key] + rng.choice((-8, -1, 1, 8))])
        forged[key] = value
    elif kind == 2:
        forged.pop(rng.choice(list(forged)))
    elif kind == 3:
        forged[rng.choice(("extra", "Name", "format"))] = rng.choice(("x", 1, None))
    elif kind == 4:
        forged = rng.choice((None, [], "desc", json.dumps(desc), list(desc.items())))
    else:
        forged["name"] = desc["name"].replace(NAMESPACE, rng.choice(("fuzz", "", "a/b", "x" * 70)))
    return forged


def segment_case(
    rng: random.Random, pool: list[bytes], states: list[State], live: list[str], held: list
) -> tuple[Any, str | None, list[str]]:
    """(descriptor to attach, namespace= argument, segments to remove afterwards).

    Sometimes a State attached before the segment is damaged stays alive in `held`, so the
    attach under test meets a live mapping of the segment (the reuse path) and must notice
    a flipped, resized or forged segment all the same.
    """
    kind = rng.randrange(4)
    if kind == 0:  # mutated payload bytes in a segment of their own
        data = mutate(rng, rng.choice(pool), pool)
        if rng.random() < 0.2:
            data = mutate(rng, data, pool)
        desc = raw_segment(data, rng)
    else:
        state = rng.choice(states)  # (shm.publish: a State would remember every name)
        desc = shm.publish(state.tensors, state.meta, NAMESPACE, rng.random() < 0.5)
    made = [desc["name"]]
    if rng.random() < 0.3:
        with contextlib.suppress(StateError):
            held.append(State.from_shared_memory(dict(desc)))
    if kind == 1:
        flip_in_place(desc, rng)
    elif kind == 2:
        resize(desc, rng)
    elif kind == 3:
        desc = forge(desc, rng, live)
    namespace = rng.choice((None,) * 10 + (NAMESPACE,) * 9 + (OTHER_NAMESPACE,))
    return desc, namespace, made


def fuzz_segments(rng: random.Random, cases: int, crashes: list[Any]) -> Counter:
    pool = seeds()
    states = [State.deserialize(p) for p in pool]
    live = [states[0].to_shared_memory(OTHER_NAMESPACE)["name"]]  # real, but foreign
    live.append(states[2].to_shared_memory(NAMESPACE)["name"])  # real, other sizes
    counts: Counter = Counter()
    for i in range(cases):
        held: list[State] = []  # alive until this case is over: its mapping can be reused
        desc, namespace, made = segment_case(rng, pool, states, live, held)
        copy = rng.random() < 0.5

        def attempt(desc: Any = desc, namespace: str | None = namespace, copy: bool = copy) -> None:
            state = State.from_shared_memory(desc, copy=copy, namespace=namespace)
            for t in state.tensors.values():  # touch every byte a view maps
                t.detach().reshape(-1).view(torch.uint8).sum()
            state.close_shared_memory(unlink=False)

        run_case(attempt, counts, lambda desc=desc: crashes.append(repr(desc)))
        for name in made:
            shm.unlink_segment(name)
        progress("segments", i, cases, counts)
    for name in live:
        shm.unlink_segment(name)
    return counts


def progress(mode: str, i: int, cases: int, counts: Counter) -> None:
    if (i + 1) % 100_000 == 0:
        print(f"{mode}: {i + 1}/{cases} {dict(counts)}", flush=True)


def record(mode: str, entry: dict[str, Any]) -> None:
    """Add `entry` to the runs of `mode` in results/fuzz_state.json, replacing an earlier run
    with the same seed and case count (other runs kept)."""
    path = RESULTS / "fuzz_state.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    same = (entry["seed"], entry["cases"])
    runs = [r for r in results.get(mode, []) if (r["seed"], r["cases"]) != same]
    results[mode] = sorted([*runs, entry], key=lambda r: (r["seed"], r["cases"]))
    path.write_text(json.dumps(results, indent=2) + "\n")


def save_crashes(mode: str, crashes: list[Any]) -> None:
    for i, item in enumerate(crashes[:20]):
        suffix = "bin" if isinstance(item, bytes) else "txt"
        out = RESULTS / f"fuzz_crash_{mode}_{i}.{suffix}"
        out.write_bytes(item) if isinstance(item, bytes) else out.write_text(item)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("bytes", "segments"), default="bytes")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    crashes: list[Any] = []
    fuzz = fuzz_bytes if args.mode == "bytes" else fuzz_segments
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    try:
        counts = fuzz(rng, args.cases, crashes)
    finally:
        shm.cleanup_namespace(NAMESPACE, include_live=True)
        shm.cleanup_namespace(OTHER_NAMESPACE, include_live=True)
    wall = time.perf_counter() - t0
    findings = sum(v for k, v in counts.items() if k.startswith("FINDING"))
    entry = {
        "cases": args.cases,
        "seed": args.seed,
        "outcomes": dict(sorted(counts.items())),
        "findings": findings,
        "wall_s": round(wall, 1),
        "cases_per_s": round(args.cases / wall),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, "
        f"one torch thread, Python {platform.python_version()}, torch {torch.__version__}",
        "command": f"benchmarks/fuzz_state.py --mode {args.mode} --cases {args.cases} "
        f"--seed {args.seed}",
    }
    print(json.dumps(entry, indent=2))
    if not args.no_record:
        record(args.mode, entry)
    save_crashes(args.mode, crashes)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
