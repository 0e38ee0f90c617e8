"""Logger backends: scalars of every form, TensorBoard videos, W&B offline runs and resume."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from worldflux.core.exceptions import ConfigError
from worldflux.training.config import TrainerConfig
from worldflux.training.log_backends import WANDB_ID_FILE, WandbOptions
from worldflux.training.logging import Logger, read_metrics
from worldflux.training.video import write_video


def _gif(path: Path) -> Path:
    frames = [np.full((12, 20, 3), 40 * i, np.uint8) for i in range(4)]  # (H, W, 3)
    return write_video(path, frames, fps=5)


def test_scalars_may_be_floats_tensors_or_numpy(tmp_path: Path) -> None:
    log = Logger(tmp_path, 10, tensorboard=False, progress=False)
    values = {"f": 1.5, "t0": torch.tensor(2.5), "t1": torch.tensor([3.5]), "np": np.float32(4.5),
              "vec": torch.zeros(3), "arr": np.zeros(2), "text": "x"}  # fmt: skip
    log.log(7, "train", values)
    log.close()
    (record,) = read_metrics(tmp_path, "train")
    assert {k: record[k] for k in ("f", "t0", "t1", "np")} == {
        "f": 1.5, "t0": 2.5, "t1": 3.5, "np": 4.5,
    }  # fmt: skip
    assert not {"vec", "arr", "text"} & set(record)


def test_tensorboard_gets_scalars_and_gif_videos(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    gif = _gif(tmp_path / "v.gif")
    log = Logger(tmp_path, 10, tensorboard=True, progress=False)
    log.log(3, "train", {"loss": torch.tensor(0.25)})
    log.video(3, "eval", gif)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == [0.25]
    (image,) = events.Images("video/eval")
    assert image.step == 3 and (image.width, image.height) == (20, 12)
    assert image.encoded_image_string == gif.read_bytes()  # an animated GIF TensorBoard plays


# --- W&B ---------------------------------------------------------------------------------------


def wandb_records(run_dir: Path, wait_s: float = 30.0) -> list[Any]:
    """The records of every offline W&B run file under `run_dir`, once each has its ``exit``
    record (wandb's service process writes them after ``finish()`` returns)."""
    deadline = time.monotonic() + wait_s
    while True:
        paths = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        runs = [_read_wandb_file(p) for p in paths]
        done = all(any(r.WhichOneof("record_type") == "exit" for r in run) for run in runs)
        if done or time.monotonic() > deadline:
            return [record for run in runs for record in run]
        time.sleep(0.1)


def _read_wandb_file(path: Path) -> list[Any]:
    """LevelDB-log framing: a 7-byte file header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc, length, kind); a record is one full chunk or first..last chunks."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    raw, pos, buf = path.read_bytes(), 7, b""
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        buf, pos = buf + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """Each logged row as a dict; nested values (a video's fields) as nested dicts."""
    rows = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in r.history.item:
            *outer, last = [item.key] if item.key else list(item.nested_key)
            into = row
            for key in outer:
                into = into.setdefault(key, {})
            into[last] = json.loads(item.value_json)
        rows.append(row)
    return rows


def _next_second() -> None:
    """Offline run dirs are named by the second and the run id: a resume of the same id in
    the same second would reuse (and rewrite) the first one's file."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb_dir


def test_wandb_offline_run_gets_scalars_and_videos(tmp_path: Path, wandb_offline: Path) -> None:
    run_dir = tmp_path / "my-run"
    gif = _gif(tmp_path / "v.gif")
    log = Logger(run_dir, 10, tensorboard=False, progress=False, wandb=WandbOptions(group="g"))
    log.log(5, "train", {"loss": torch.tensor(0.5), "vec": torch.zeros(2)})
    log.log(9, "eval", {"return_mean": 12.0, "bad": float("nan")})
    log.video(9, "eval", gif)
    log.close()
    history = wandb_history(wandb_offline)
    assert [(h["env_step"], h["train/loss"]) for h in history if "train/loss" in h] == [(5, 0.5)]
    assert [h["eval/return_mean"] for h in history if "eval/return_mean" in h] == [12.0]
    assert not any("train/vec" in h or "eval/bad" in h for h in history)
    (video,) = [h["video/eval"] for h in history if "video/eval" in h]
    assert video["_type"] == "video-file" and video["path"].endswith(".gif")
    (run,) = [r.run for r in wandb_records(wandb_offline) if r.WhichOneof("record_type") == "run"]
    stored = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert (run.run_id, run.display_name, run.project, run.run_group) == (
        stored, "my-run", "worldflux", "g",
    )  # fmt: skip


def test_wandb_resume_continues_the_same_run(tmp_path: Path, wandb_offline: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (1, 2):  # a run, then its resume (a new Logger on the same run dir)
        _next_second()
        log = Logger(run_dir, 10, tensorboard=False, progress=False, wandb=WandbOptions())
        log.log(step, "train", {"loss": float(step)})
        log.close()
    runs = [r.run for r in wandb_records(wandb_offline) if r.WhichOneof("record_type") == "run"]
    stored = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert len(runs) == 2 and {r.run_id for r in runs} == {stored}
    assert [h["train/loss"] for h in wandb_history(wandb_offline)] == [1.0, 2.0]


def test_wandb_missing_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ConfigError, match=r"^wandb: wandb=true needs the wandb package; pip "
                       r"install 'worldflux\[wandb\]' \(or set wandb=false\)$"):  # fmt: skip
        Logger(tmp_path, 10, tensorboard=False, progress=False, wandb=WandbOptions())
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("wandb", "yes", r"wandb: expected true or false, got 'yes'"),
        ("wandb_project", "", r"wandb_project: expected a project name, got ''"),
        ("wandb_group", 3, r"wandb_group: expected a non-empty string or null, got 3"),
        ("video_every", -1, r"video_every: expected an int >= 0, got -1"),
    ],
)
def test_logging_options_are_validated(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainerConfig(**{field: value})


def test_a_resumed_training_run_logs_into_the_same_wandb_run(
    tmp_path: Path, wandb_offline: Path
) -> None:
    from worldflux.training.run import build_trainer, resume_trainer
    from worldflux.training.run_config import parse_overrides

    items = ["steps=60", "seed_steps=20", "updates_per_step=0.2", "log_every=10", "eval_every=0",
             "checkpoint_every=30", "progress=false", "tensorboard=false", "agent.act=policy",
             "agent.batch_size=4", "wandb=true", "wandb_name=pendulum-a"]  # fmt: skip
    config = parse_overrides("tdmpc2:debug", "Pendulum-v1", items)
    build_trainer(config, tmp_path / "run").train(stop_at=30)
    _next_second()
    resume_trainer(tmp_path / "run").train()
    runs = [r.run for r in wandb_records(wandb_offline) if r.WhichOneof("record_type") == "run"]
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1
    assert {r.display_name for r in runs} == {"pendulum-a"}
    steps = sorted({h["env_step"] for h in wandb_history(wandb_offline) if "train/loss" in h})
    assert steps[0] <= 30 < steps[-1]  # before and after the resume
