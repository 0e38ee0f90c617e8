"""Videos: GIF/MP4 writing and imagination videos (real frames beside open-loop predictions).

An imagination video filters the first `context` steps of a real sequence with
`WorldModel.update`, then predicts the rest open loop with `rollout` on the real actions and
decodes the ``obs`` head. Image observations are shown as [real | predicted | |error|]; vector
observations as a chart per frame (real solid, predicted dashed) up to the current step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError
from worldflux.core.model import WorldModel
from worldflux.core.spec import Obs, map_obs


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    """Write uint8 (H, W, 3) frames as ``.gif`` or ``.mp4`` (the latter needs imageio-ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    if not frames:
        raise SpecError("frames: expected at least one (H, W, 3) uint8 frame, got none")
    if path.suffix not in (".gif", ".mp4"):
        raise SpecError(f"path: expected a .gif or .mp4 file name, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr: list[Any] = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if path.suffix == ".gif":
        imageio.mimsave(path, arr, duration=1000.0 / fps, loop=0)
    else:
        imageio.mimsave(path, arr, fps=fps, macro_block_size=1)
    return path


def shown_field(model: WorldModel) -> str:
    """The observation field a video shows: the first image field, else the first field."""
    fields = model.obs_spec.fields
    return next((k for k, f in fields.items() if f.is_image), next(iter(fields)))


@torch.no_grad()
def imagine(
    model: WorldModel, batch: Batch, context: int, key: str | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Open-loop predictions for one sequence (batch row 0).

    Returns (real obs dict, key -> (T, *shape)), predicted obs (T - context, *shape) of field
    `key` (default `shown_field`); steps < context are filtered with real observations.
    """
    key = key or shown_field(model)
    # Dict specs decode to "obs/<field>", single-field specs to "obs"
    head = f"obs/{key}" if model.obs_spec.is_dict else "obs"
    T = batch.shape[1]
    if not 1 <= context < T:
        raise SpecError(f"context: expected 1 <= context < T={T}, got {context}")
    if "obs" not in model.heads:
        raise SpecError(f"imagine: {model.family} has no 'obs' decoder head; heads: {model.heads}")
    state = model.encode(_obs_at(batch.obs, 0))
    for t in range(1, context):
        state = model.update(state, batch.action[:1, t], _obs_at(batch.obs, t))
    actions = batch.action[:1, context:]  # (1, T - context, A): actions leading to o_context..
    traj = model.rollout(state, actions=actions)
    preds = []
    for t in range(1, traj.horizon + 1):
        preds.append(model.decode(traj.state_at(t), ["obs"])[head])
    real = {k: v[0] for k, v in model.obs_spec.fields_of(batch.obs, "batch.obs").items()}
    return real, torch.cat(preds, 0)


def _obs_at(obs: Obs, t: int) -> Obs:
    """Step `t` of sequence 0: (B, T, ...) -> (1, ...), in the observation's own form."""
    return map_obs(lambda v: v[:1, t], obs)


def _to_uint8_image(x: Tensor, channels_last: bool) -> np.ndarray:
    """A (C, H, W) or (H, W, C) image (uint8, or float in [0, 1] / [-0.5, 0.5]) -> (H, W, 3)."""
    a = x.detach().float().cpu()
    if not channels_last:
        a = a.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if x.dtype != torch.uint8:
        a = a + 0.5 if a.min() < 0 else a
        a = a * 255.0
    img = a.clamp(0, 255).round().to(torch.uint8).numpy()
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]


def image_frames(real: Tensor, pred: Tensor, context: int, channels_last: bool) -> list[np.ndarray]:
    """Frames [real | predicted | |error|]; within the context the prediction is the real one."""
    frames = []
    pred_last = channels_last and tuple(pred.shape[1:]) == tuple(real.shape[1:])
    for t in range(real.shape[0]):
        r = _to_uint8_image(real[t], channels_last)
        p = r if t < context else _to_uint8_image(pred[t - context], pred_last)
        err = np.abs(r.astype(np.int16) - p.astype(np.int16)).astype(np.uint8)
        frames.append(np.concatenate([r, p, err], axis=1))
    return frames


def vector_frames(real: Tensor, pred: Tensor, context: int) -> list[np.ndarray]:
    """Chart frames: each obs dim over time, real solid and predicted dashed, up to step t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = real.detach().float().cpu().numpy()  # (T, D)
    p = np.concatenate([r[:context], pred.detach().float().cpu().numpy()], 0)  # (T, D)
    T, D = r.shape
    fig, ax = plt.subplots(figsize=(4, 3), dpi=64)
    frames = []
    for t in range(T):
        ax.clear()
        for d in range(D):
            (line,) = ax.plot(r[: t + 1, d], lw=1.5)
            ax.plot(
                range(context - 1, t + 1),
                p[context - 1 : t + 1, d],
                "--",
                color=line.get_color(),
                lw=1.5,
            )
        ax.axvline(context - 1, color="gray", lw=0.8)
        ax.set_xlim(0, T - 1)
        ax.set_ylim(float(min(r.min(), p.min())) - 0.1, float(max(r.max(), p.max())) + 0.1)
        ax.set_title(f"real (solid) vs open-loop (dashed), t={t}", fontsize=8)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())  # type: ignore[attr-defined]
    plt.close(fig)
    return frames


def imagination_video(
    model: WorldModel, batch: Batch, path: str | Path, context: int = 5, fps: int = 10
) -> dict[str, Any]:
    """Write the imagination video of `batch` row 0 to `path`; returns path and per-step error."""
    key = shown_field(model)
    real, pred = imagine(model, batch, context, key)
    field = model.obs_spec.fields[key]
    r = real[key]
    if field.is_image:
        frames = image_frames(r, pred, context, field.channels_last)
        err = (r[context:].float() / 255.0 - _as_unit(pred, field.channels_last, r)).abs()
    else:
        frames = vector_frames(r, pred, context)
        err = (r[context:].float() - pred.float()).abs()
    write_video(path, frames, fps)
    per_step = err.reshape(err.shape[0], -1).mean(1).tolist()  # (T - context,)
    return {"path": str(path), "open_loop_error": per_step, "frames": len(frames)}


def _as_unit(pred: Tensor, channels_last: bool, like: Tensor) -> Tensor:
    """Predicted images in [0, 1] with the layout of the real frames."""
    p = pred.float()
    if pred.dtype == torch.uint8:
        p = p / 255.0
    elif p.min() < 0:
        p = p + 0.5
    if channels_last and p.shape[1:] != like.shape[1:]:
        p = p.permute(0, 2, 3, 1)  # (T, C, H, W) -> (T, H, W, C)
    return p
