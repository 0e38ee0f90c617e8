"""Run logging: JSONL always, TensorBoard when installed, a rich live progress line."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch import Tensor

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


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl``, optionally only those of one `kind`."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Drop records after env step `step` (logged after the checkpoint a run resumes from).

    Returns how many records were dropped; the file is replaced atomically.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(keep) == len(lines):
        return 0
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(keep)
    tmp.replace(path)
    return len(lines) - len(keep)
