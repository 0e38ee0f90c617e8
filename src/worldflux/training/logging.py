"""Run logging: JSONL always, TensorBoard when installed, a rich live progress line."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from worldflux.core.exceptions import WorldFluxError

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float | None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, bool | int | float):
        return float(value)
    return None


class Logger:
    """Writes ``{"step": env_step, "kind": ..., key: value}`` lines to ``<run_dir>/metrics.jsonl``.

    `kind` groups metrics ("train", "eval", "episode", "profile"). TensorBoard scalars go to
    ``<run_dir>/tb`` when `tensorboard=True` and the package is installed. `progress` shows a rich
    live line with env steps, updates/s and the last episode return.
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        tensorboard: bool = True,
        progress: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 - closed in close()
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                self._tb = None
        self._progress: Any = None
        self._task: Any = None
        self.total_steps = total_steps
        self.last_return: float | None = None
        self.last_eval: float | None = None
        self._rate_t, self._rate_updates, self.updates_per_s = time.perf_counter(), 0, 0.0
        if progress:
            self._start_progress()

    def _start_progress(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]steps[/] {task.completed:>8.0f}/{task.total:.0f}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            refresh_per_second=2,
        )
        self._task = self._progress.add_task("train", total=self.total_steps, info="")
        self._progress.start()

    def log(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        """Append one record; non-scalar values are dropped, non-finite ones kept as strings."""
        record: dict[str, Any] = {"step": int(step), "kind": kind, "time": time.time()}
        for key, value in metrics.items():
            v = _scalar(value)
            if v is None:
                continue
            record[key] = v if math.isfinite(v) else str(v)
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(f"{kind}/{key}", v, step)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if kind == "episode" and "return" in record:
            self.last_return = float(record["return"])
        if kind == "eval" and "return_mean" in record:
            self.last_eval = float(record["return_mean"])

    def progress(self, step: int, updates: int) -> None:
        """Refresh the live line: env steps, updates/s (over the last few seconds), last return."""
        now = time.perf_counter()
        if now - self._rate_t >= 2.0:
            self.updates_per_s = (updates - self._rate_updates) / (now - self._rate_t)
            self._rate_t, self._rate_updates = now, updates
        if self._progress is None:
            return
        ret = "-" if self.last_return is None else f"{self.last_return:.1f}"
        ev = "-" if self.last_eval is None else f"{self.last_eval:.1f}"
        info = f"updates/s {self.updates_per_s:5.1f}  return {ret}  eval {ev}"
        self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if not self._file.closed:
            self._file.close()


def _parse_lines(path: Path) -> tuple[list[str], list[dict[str, Any]], bool]:
    """Lines (each ending in a newline), their records, and whether a torn last line was dropped.

    A kill -9 while appending leaves the last line cut short: it is dropped. A damaged line
    elsewhere is a `WorldFluxError` naming the file and line.
    """
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    keep: list[str] = []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if number == len(lines):
                return keep, records, True
            raise WorldFluxError(f"{path}: line {number} is not a JSON record ({e})") from e
        keep.append(line if line.endswith("\n") else line + "\n")
        records.append(record)
    return keep, records, False


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl``, optionally only those of one `kind`.

    A torn last line (a crash while appending, or a run still writing it) is skipped.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = _parse_lines(path)[1]
    return [r for r in records if kind is None or r.get("kind") == kind]


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Drop records after env step `step` (logged after the checkpoint a run resumes from).

    A torn last line (a kill -9 while appending) is dropped too, with a notice on stderr.
    Returns how many records were dropped; the file is replaced atomically.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    lines, records, torn = _parse_lines(path)
    keep = [line for line, r in zip(lines, records, strict=True) if r.get("step", 0) <= step]
    if torn:
        print(
            f"metrics: dropped the torn last line of {path} (a crash while appending)",
            file=sys.stderr,
        )
    if len(keep) == len(lines) and not torn and _ends_with_newline(path):
        return 0
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(keep)
    tmp.replace(path)
    return len(lines) - len(keep)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"
