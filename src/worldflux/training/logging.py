"""Run logging: JSONL always, TensorBoard when installed, W&B when asked, a live progress line.

The TensorBoard and W&B writers are in `worldflux.training.log_backends`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from worldflux.core.exceptions import WorldFluxError
from worldflux.training.log_backends import TensorBoardBackend, WandbBackend, WandbOptions

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float | None:
    """A float for Python numbers, 0-d (or one-element) tensors and numpy scalars; else None."""
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else None
    elif isinstance(value, np.ndarray | np.generic):
        value = value.item() if value.size == 1 else None
    if isinstance(value, bool | int | float):
        return float(value)
    return None


class Logger:
    """Writes ``{"step": env_step, "kind": ..., key: value}`` lines to ``<run_dir>/metrics.jsonl``.

    `kind` groups metrics ("train", "eval", "episode", "profile"). TensorBoard scalars go to
    ``<run_dir>/tb`` when `tensorboard=True` and the package is installed; W&B gets them too
    when `wandb` options are given (a `ConfigError` when wandb is not installed). Values may be
    Python numbers, one-element tensors or numpy scalars. `progress` shows a rich live line
    with env steps, updates/s and the last episode return.
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        tensorboard: bool = True,
        progress: bool = True,
        wandb: WandbOptions | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._backends: list[Any] = []
        if wandb is not None:  # first: a missing package fails before any file is opened
            self._backends.append(WandbBackend(self.run_dir, wandb))
        if tensorboard:  # the default: without the package, the JSONL file has everything
            with contextlib.suppress(ImportError):
                self._backends.append(TensorBoardBackend(self.run_dir))
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 - closed in close()
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
        finite: dict[str, float] = {}
        for key, value in metrics.items():
            v = _scalar(value)
            if v is None:
                continue
            record[key] = v if math.isfinite(v) else str(v)
            if math.isfinite(v):
                finite[key] = v
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for backend in self._backends:
            backend.scalars(int(step), kind, finite)
        if kind == "episode" and "return" in record:
            self.last_return = float(record["return"])
        if kind == "eval" and "return_mean" in record:
            self.last_eval = float(record["return_mean"])

    def video(self, step: int, name: str, path: str | Path) -> None:
        """Send the GIF at `path` (already written, e.g. under ``<run_dir>/videos``) to
        TensorBoard and W&B as video `name` at env step `step`."""
        for backend in self._backends:
            backend.video(int(step), name, Path(path))

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
        backends, self._backends = self._backends, []
        for backend in backends:
            backend.close()
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
