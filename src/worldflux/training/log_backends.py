"""Where `Logger` sends scalars and videos besides ``metrics.jsonl``: TensorBoard and W&B.

Each backend takes ``scalars(step, kind, values)`` (finite floats, tagged ``<kind>/<key>``),
``video(step, name, path)`` (an animated GIF already on disk) and ``close()``. The x axis is
always the env step.

TensorBoard videos are the GIF bytes in an image summary (what ``SummaryWriter.add_video``
writes, without needing moviepy); TensorBoard's image tab plays them.

W&B (``wandb=true``, the ``wandb`` extra): the run id is kept in ``<run_dir>/wandb_id``, so
``worldflux resume`` continues the same W&B run. Every record carries ``env_step``, the step
metric of all charts (W&B's own step only grows, and a resumed run logs again the steps after
its checkpoint). Files go to ``<run_dir>/wandb`` unless ``WANDB_DIR`` says otherwise; with
``WANDB_MODE=offline`` nothing leaves the machine (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldflux.core.exceptions import ConfigError

WANDB_ID_FILE = "wandb_id"


def require_wandb() -> Any:
    """The `wandb` module, or a one-line `ConfigError` saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "wandb: wandb=true needs the wandb package; pip install 'worldflux[wandb]' "
            "(or set wandb=false)"
        ) from None
    return wandb


@dataclass(frozen=True)
class WandbOptions:
    """Where a run goes in W&B (`TrainerConfig`'s ``wandb_*`` fields)."""

    project: str = "worldflux"
    entity: str | None = None  # None: the account's default entity
    name: str | None = None  # None: the run directory's name
    group: str | None = None  # e.g. the seeds of one experiment
    config: dict[str, Any] | None = None  # shown as the run's config (the run.json sections)


def wandb_options(config: Any, run_info: dict[str, Any] | None) -> WandbOptions:
    """A `TrainerConfig`'s ``wandb_*`` fields, with the run's config (`run_info`) to show."""
    c = config
    return WandbOptions(c.wandb_project, c.wandb_entity, c.wandb_name, c.wandb_group,
                        config=run_info or None)  # fmt: skip


class TensorBoardBackend:
    """Scalars and GIF videos in ``<run_dir>/tb``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"{kind}/{key}", value, step)

    def video(self, step: int, name: str, path: Path) -> None:
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(path) as img:
            width, height = img.size
        image = Summary.Image(
            height=height, width=width, colorspace=3, encoded_image_string=path.read_bytes()
        )
        summary = Summary(value=[Summary.Value(tag=f"video/{name}", image=image)])
        # add_video's own route (it would need moviepy only to encode the GIF)
        self._writer._get_file_writer().add_summary(summary, step)

    def close(self) -> None:
        self._writer.close()


class WandbBackend:
    """One W&B run per run directory, resumed by the id in ``<run_dir>/wandb_id``."""

    def __init__(self, run_dir: Path, options: WandbOptions) -> None:
        self._wandb = require_wandb()
        run_id = wandb_run_id(run_dir)
        self._run = self._wandb.init(
            project=options.project,
            entity=options.entity,
            name=options.name or run_dir.resolve().name,
            group=options.group,
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(_wandb_dir(run_dir)),
            config=options.config,
        )
        self._run.define_metric("env_step")
        self._run.define_metric("*", step_metric="env_step")

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        self._run.log({"env_step": step, **{f"{kind}/{k}": v for k, v in values.items()}})

    def video(self, step: int, name: str, path: Path) -> None:
        self._run.log({"env_step": step, f"video/{name}": self._wandb.Video(str(path))})

    def close(self) -> None:
        self._run.finish()


def _wandb_dir(run_dir: Path) -> Path:
    path = run_dir / "wandb"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of `run_dir`: read from ``wandb_id``, or made (8 random lowercase
    letters and digits, W&B's own form) and stored there."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
    return run_id
