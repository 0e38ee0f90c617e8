"""State serialization / shared-memory benchmark against a memcpy of the same bytes.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/state_bench.py [--runs 3] [--quick] [--no-docs]
Prints one table, writes benchmarks/results/state_bench.json and the "## State" section of
docs/benchmarks.md. One thread; figures are the fastest of many calls (medians in the JSON),
and with --runs N the median of N runs of each figure.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import safetensors.torch as st  # noqa: E402
import torch  # noqa: E402

from worldflux.core.serialization import payload, shm  # noqa: E402
from worldflux.core.state import State  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
TARGETS = {"small": 2.5, "large": 1.2, "many": 6.0}  # ser+deser / (2 x memcpy)


def make_states() -> dict[str, State]:
    """The three States of the issue: small, large (~28 MiB) and many (64 keys)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    small = {"deter": rnd(16, 512)} | {
        k: rnd(16, 32, 32) for k in ("stoch", "prior_logits", "posterior_logits")
    }
    large = {"deter": rnd(1024, 4096)} | {
        k: rnd(1024, 32, 32) for k in ("stoch", "prior_logits", "posterior_logits")
    }
    # 1, 8 and 64 keys of the same 256 KiB: what each extra tensor costs
    one = {"k00": rnd(16, 4096)}
    eight = {f"k{i:02d}": rnd(16, 512) for i in range(8)}
    many = {f"k{i:02d}": rnd(16, 64) for i in range(64)}
    return {
        "small": State(small),
        "large": State(large),
        "one": State(one),
        "eight": State(eight),
        "many": State(many),
    }


class Timer:
    """Figures on a shared machine (other jobs compete for the 2 cores and memory bandwidth).

    Each operation runs in BLOCKS blocks, every block bracketed by memcpys of the State's
    bytes into a warm buffer. Contention only ever adds time, so the reported figure is the
    fastest call (`us`) and its ratio is fastest call / fastest bracketing memcpy (`ratio`);
    medians go to the JSON (`median_us`, `median_ratio`: the median over blocks of block
    median / bracketing memcpy median).
    """

    BLOCKS = 5

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.src = torch.empty(nbytes, dtype=torch.uint8).random_(0, 255)
        self.dst = torch.empty(nbytes, dtype=torch.uint8)
        self.memcpy: list[int] = []
        self.us: dict[str, float] = {"bytes": nbytes}
        self.ratio: dict[str, float] = {}
        self.medians: dict[str, float] = {}

    def _memcpy_block(self, n: int) -> list[int]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            ctypes.memmove(self.dst.data_ptr(), self.src.data_ptr(), self.nbytes)
            times.append(time.perf_counter_ns() - t0)
        self.memcpy.extend(times)
        return times

    def __call__(
        self,
        key: str,
        fn: Callable[..., object],
        repeats: int,
        setup: Callable[[], object] | None = None,
    ) -> None:
        """Time `fn()` (or `fn(setup())`, setup untimed) into `us[key]` and `ratio[key]`."""
        per_block = max(1, repeats // self.BLOCKS)
        samples, copies, block_ratios = [], [], []
        for _ in range(self.BLOCKS):
            before = self._memcpy_block(min(per_block, 20))
            times = []
            for _ in range(per_block):
                arg = setup() if setup is not None else None
                t0 = time.perf_counter_ns()
                fn() if setup is None else fn(arg)
                times.append(time.perf_counter_ns() - t0)
            after = self._memcpy_block(min(per_block, 20))
            samples += times
            copies += before + after
            block_ratios.append(statistics.median(times) / statistics.median(before + after))
        self.us[key] = min(samples) / 1000.0
        self.ratio[key] = min(samples) / min(copies)
        self.medians[f"{key}_median_us"] = statistics.median(samples) / 1000.0
        self.medians[f"{key}_median_ratio"] = statistics.median(block_ratios)


def _forget_exact() -> None:
    payload.clear_caches(exact_only=True)


def bench_state(state: State, repeats: int) -> dict[str, float]:
    """Every figure for one State: µs, plus ratios to memcpy."""
    timer = Timer(sum(t.nbytes for t in state.tensors.values()))
    timer("copy_", lambda: timer.dst.copy_(timer.src), repeats)
    data = state.serialize()
    timer("serialize", state.serialize, repeats)
    packed = state.packed()  # the same tensors as views of one buffer: one-copy writes
    timer("serialize_packed", packed.serialize, repeats)
    timer("deserialize", lambda: State.deserialize(data), repeats)
    timer("deserialize_cold", lambda _: State.deserialize(data), repeats, payload.clear_caches)
    writable = bytearray(data)
    timer("deserialize_zero_copy", lambda: State.deserialize(writable, copy=False), repeats)
    for algo in ("xxh3_64", "crc32"):
        checked = state.serialize(checksum=algo)
        timer(f"serialize_{algo}", lambda a=algo: state.serialize(checksum=a), repeats)
        timer(f"deserialize_{algo}", lambda c=checked: State.deserialize(c), repeats)
    # New data each call means new checksum digits: the header comes from the skeleton cache.
    checked = state.serialize(checksum=True)
    timer("deserialize_skeleton", lambda _: State.deserialize(checked), repeats, _forget_exact)
    bench_shm(state, packed, repeats, timer)
    timer("torch_save", lambda: torch.save(state.tensors, io.BytesIO()), repeats)
    buf = io.BytesIO()
    torch.save(state.tensors, buf)
    raw = buf.getvalue()
    timer("torch_load", lambda: torch.load(io.BytesIO(raw), weights_only=True), repeats)
    timer("safetensors_save", lambda: st.save(state.tensors), repeats)
    timer("safetensors_load", lambda: st.load(data), repeats)
    timer("to_same_device", lambda: state.to("cpu"), max(repeats, 2000))
    r = dict(timer.us) | timer.medians
    r["memcpy"] = min(timer.memcpy) / 1000.0
    r["serdes_ratio"] = (timer.ratio["serialize"] + timer.ratio["deserialize"]) / 2
    r["serdes_cold_ratio"] = (timer.ratio["serialize"] + timer.ratio["deserialize_cold"]) / 2
    r["serdes_packed_ratio"] = (timer.ratio["serialize_packed"] + timer.ratio["deserialize"]) / 2
    r["publish_reused_ratio"] = timer.ratio["publish_reused"]
    r["publish_reused_packed_ratio"] = timer.ratio["publish_reused_packed"]
    for algo in ("xxh3_64", "crc32"):
        r[f"serdes_{algo}_ratio"] = (
            timer.ratio[f"serialize_{algo}"] + timer.ratio[f"deserialize_{algo}"]
        ) / 2
    return r


def bench_shm(state: State, packed: State, repeats: int, timer: Timer) -> None:
    """Fresh publish, reused publish, attach (zero-copy and copy) and close."""
    descs: list[dict] = []
    timer("publish_fresh", lambda: descs.append(state.to_shared_memory(NAMESPACE)), repeats)
    for d in descs:
        shm.unlink_segment(d["name"])
    with shm.SegmentPool(NAMESPACE) as pool:
        timer("publish_reused", lambda: pool.publish(state), repeats)
        timer("publish_reused_packed", lambda: pool.publish(packed), repeats)
        desc = pool.publish(state)
        # Earlier attachments stay alive, so the segment is mapped in this process (as in a
        # consumer loop `state = State.from_shared_memory(...)`): attach reuses the mapping.
        attached: list[State] = []
        timer("attach", lambda: attached.append(State.from_shared_memory(desc)), repeats)
        timer(
            "close",
            lambda s: s.close_shared_memory(unlink=False),
            len(attached) - 5,
            setup=attached.pop,
        )
        timer("attach_copy", lambda: State.from_shared_memory(desc, copy=True), repeats)
        attached.clear()
        # No live mapping: the previous State is dropped (and unmapped) before each call.
        timer(
            "attach_unmapped",
            lambda _: attached.append(State.from_shared_memory(desc)),
            repeats,
            attached.clear,
        )
        attached.clear()


ROWS = [
    ("bytes", "payload tensor bytes", "{:.0f}"),
    ("memcpy", "memcpy (ctypes.memmove) µs", "{:.1f}"),
    ("copy_", "torch copy_ µs", "{:.1f}"),
    ("serialize", "serialize µs", "{:.1f}"),
    ("deserialize", "deserialize (copy) µs", "{:.1f}"),
    ("deserialize_cold", "deserialize, header not cached µs", "{:.1f}"),
    ("deserialize_zero_copy", "deserialize (zero-copy) µs", "{:.1f}"),
    ("serialize_packed", "serialize, packed State µs", "{:.1f}"),
    ("serdes_ratio", "ser+deser / 2 memcpy", "{:.2f}x"),
    ("serdes_packed_ratio", "ser+deser, packed State / 2 memcpy", "{:.2f}x"),
    ("serdes_cold_ratio", "ser+deser (cold header) / 2 memcpy", "{:.2f}x"),
    ("serialize_xxh3_64", "serialize, checksum=True (xxh3_64) µs", "{:.1f}"),
    ("deserialize_xxh3_64", "deserialize, xxh3_64 verified µs", "{:.1f}"),
    ("deserialize_skeleton", "same, new checksum digits (skeleton cache) µs", "{:.1f}"),
    ("serdes_xxh3_64_ratio", "ser+deser with xxh3_64 / 2 memcpy", "{:.2f}x"),
    ("serialize_crc32", "serialize, checksum='crc32' µs", "{:.1f}"),
    ("deserialize_crc32", "deserialize, crc32 verified µs", "{:.1f}"),
    ("serdes_crc32_ratio", "ser+deser with crc32 / 2 memcpy", "{:.2f}x"),
    ("publish_fresh", "shm publish, fresh segment µs", "{:.1f}"),
    ("publish_reused", "shm publish, reused segment µs", "{:.1f}"),
    ("publish_reused_ratio", "publish reused / memcpy", "{:.2f}x"),
    ("publish_reused_packed", "shm publish, reused segment, packed State µs", "{:.1f}"),
    ("publish_reused_packed_ratio", "publish reused, packed State / memcpy", "{:.2f}x"),
    ("attach", "shm attach (copy=False), segment mapped here µs", "{:.1f}"),
    ("attach_unmapped", "shm attach (copy=False), segment not mapped here µs", "{:.1f}"),
    ("attach_copy", "shm attach (copy=True) µs", "{:.1f}"),
    ("close", "shm close µs", "{:.1f}"),
    ("torch_save", "torch.save (BytesIO) µs", "{:.1f}"),
    ("torch_load", "torch.load (BytesIO) µs", "{:.1f}"),
    ("safetensors_save", "safetensors.torch.save µs", "{:.1f}"),
    ("safetensors_load", "safetensors.torch.load µs", "{:.1f}"),
    ("to_same_device", "to() same device µs", "{:.2f}"),
]


def table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per figure, one column per State."""
    names = list(results)
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label, fmt in ROWS:
        cells = [fmt.format(results[n][key]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict[str, float]]) -> str:
    """One line per target of the issue: the figure reached and whether it is met."""
    lines = []
    for name, limit in TARGETS.items():
        if name not in results:
            continue
        x = results[name]["serdes_ratio"]
        lines.append(f"ser+deser {name}: {x:.2f}x two memcpys (target <= {limit}x)")
        x = results[name]["serdes_packed_ratio"]
        lines.append(f"ser+deser {name}, packed: {x:.2f}x two memcpys (target <= {limit}x)")
    for name, r in results.items():
        lines.append(f"attach {name}: {r['attach']:.1f} µs (target <= 30 µs)")
        lines.append(f"attach {name}, not mapped: {r['attach_unmapped']:.1f} µs (target <= 30 µs)")
    for name, r in results.items():
        x = r["publish_reused_ratio"]
        lines.append(f"publish into a reused segment, {name}: {x:.2f}x memcpy (target <= 1.2x)")
        x = r["publish_reused_packed_ratio"]
        lines.append(f"same, {name}, packed: {x:.2f}x memcpy (target <= 1.2x)")
    for name, r in results.items():
        lines.append(f"to() same device, {name}: {r['to_same_device']:.2f} µs (target <= 1 µs)")
    out = []
    for line in lines:
        value, target = line.rsplit("(target <= ", 1)
        reached = float(value.split(": ")[1].split()[0].rstrip("x"))
        limit = float(target.split()[0].rstrip("x)"))
        out.append(f"- {line}: {'met' if reached <= limit else 'NOT met'}")
    return "\n".join(out)


NOTE = (
    "Where the time goes (profiled piece by piece on this machine): for the large State every "
    "path is within a few percent of the copies it must make. `one`, `eight` and `many` hold "
    "the same 256 KiB in 1, 8 and 64 tensors, so the copies take ~5 µs and the rest is "
    "per-call and per-tensor work. A State of separate tensors (as a model returns it) pays "
    "per tensor on every serialize/publish: reading its dtype/shape/grad/device to find the "
    "cached header (~0.25 µs) and one `torch.cat` input (~0.2 µs), ~30 µs for 64 keys. "
    "A *packed* State (what `deserialize`, `from_shared_memory` and `State.packed()` "
    "return: tensors that are views of one buffer) skips both: it checks that its keys and "
    "tensor objects are still the packed ones (two C-level comparisons, ~1.7 µs for 64 keys), "
    "takes a cached plan and copies header and buffer by slice assignment (the buffer copy "
    "itself runs ~0.35 µs under the ctypes memcpy the ratios divide by). What is left above "
    "the copy is that check plus ~1.5-2 µs of Python per call (plan lookup, generation word, "
    "descriptor): a 64-key publish at ~1.7x and a 1-key one at ~1.4x a 5 µs memcpy. The 1.2x "
    "target allows ~1 µs beyond the copy: out of reach for a 256 KiB payload from Python, met "
    "for large ones. Deserialize and attach must create one tensor object per key: one "
    "`split_with_sizes` per run of same-dtype tensors below torch's view tracking still costs "
    "~0.25-0.3 µs per tensor (~18 µs for 64), the floor of a 64-key attach. Around it, an "
    "attach of a segment this process already maps (earlier attachments alive, as in a "
    "consumer loop) costs a `stat` (~2 µs: is it still the same file?), the descriptor, "
    "generation and header checks (~2 µs, the header matched by memcmp) and ~3 µs of "
    "bookkeeping: ~27 µs for 64 keys, ~12 µs for one. A segment not mapped here adds "
    "shm_open, fstat, mmap and close (~9 µs) and the first touch of its header pages: "
    "~40 µs for 64 keys, above the 30 µs target."
)


def section(md_table: str, machine: str, runs: int) -> str:
    """The '## State' section of docs/benchmarks.md."""
    how = "" if runs == 1 else f"; each figure is the median of {runs} such runs"
    return (
        "## State\n\n"
        "Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/state_bench.py --runs 3` "
        "(results also in `benchmarks/results/state_bench.json`).\n\n"
        f"Machine: {machine}. One thread. The CPUs and memory bandwidth are shared with other "
        "jobs, and contention only adds time, so within a run every figure is the fastest of "
        "many calls and every ratio is (fastest call) / (fastest memcpy of the same bytes into "
        "a warm buffer, timed in blocks just before and after the operation's blocks)"
        f"{how}. Medians over calls are in the JSON. Targets: "
        "ser+deser <= 1.2x (large), 2.5x (small), 6x (many) two memcpys; attach <= 30 µs; "
        "publish reused <= 1.2x memcpy; to() same device <= 1 µs. Guide: docs/state.md.\n\n"
        + md_table
        + "\n\n"
        + NOTE
        + "\n"
    )


def write_docs(text_of_section: str) -> None:
    """Replace (or append) the '## State' section of docs/benchmarks.md."""
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"## State\n.*?(?=\n## |\Z)", re.S)
    text = (
        pattern.sub(lambda _: text_of_section.rstrip("\n") + "\n", text)
        if pattern.search(text)
        else (text.rstrip("\n") + "\n\n" + text_of_section)
    )
    path.parent.mkdir(exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def median_runs(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Figure by figure, the median over runs."""
    return {
        name: {key: statistics.median(r[name][key] for r in runs) for key in figures}
        for name, figures in runs[0].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ or results/")
    parser.add_argument("--states", default="", help="comma-separated subset, e.g. one,many")
    parser.add_argument("--runs", type=int, default=1, help="repeat; report medians of runs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reps = {"small": 1000, "large": 50, "one": 1000, "eight": 1000, "many": 1000}
    if args.quick:
        reps = {k: max(5, v // 20) for k, v in reps.items()}
    chosen = [s for s in args.states.split(",") if s]
    runs, loads = [], []
    for _ in range(max(1, args.runs)):
        run = {}
        for name, state in make_states().items():
            if not chosen or name in chosen:
                run[name] = bench_state(state, reps[name])
        shm.cleanup_namespace(NAMESPACE, include_live=True)
        runs.append(run)
        loads.append(os.getloadavg()[0])
    results = median_runs(runs)
    md = table(results) + "\n\n" + verdicts(results)
    print(md)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    machine = (
        f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs "
        f"(1-min load average {min(loads):.1f}-{max(loads):.1f} at the end of each run), "
        f"Linux, torch {torch.__version__}"
    )
    if not args.no_docs:
        out = ROOT / "benchmarks" / "results" / "state_bench.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": machine, "runs": len(runs), "results": results}
        out.write_text(json.dumps(record, indent=2) + "\n")
        write_docs(section(md, machine, len(runs)))


if __name__ == "__main__":
    main()
