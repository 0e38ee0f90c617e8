"""Videos during training (`TrainerConfig.video_every`): an evaluation episode in the real env
and, for families with an observation decoder, an imagination video (real frames beside the
model's open-loop predictions, see `worldflux.training.video`).

Each is written to ``<run_dir>/videos/{eval,imagination}_<env step>.gif`` and sent to
TensorBoard and W&B through `Logger.video`.

Recording leaves the training stream alone, so a run with videos continues exactly as one
without them (same metrics, same weights): it acts in envs of its own, and the global RNGs,
the agent's extra state (planner warm starts, goals) and the modules' train/eval modes are put
back afterwards. An env that cannot render gets a one-line notice and no more eval videos; a
family without an ``obs`` head (or observations a video cannot draw) one for imagination
videos. Training goes on either way.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.agents.base import Agent
from worldflux.core.exceptions import ConfigError, WorldFluxError
from worldflux.training.checkpoint import capture_rng, restore_rng
from worldflux.training.evaluate import EVAL_SEED_OFFSET, _episode, collect_sequence
from worldflux.training.video import imagination_video, write_video

VIDEO_DIR = "videos"


class VideoRecorder:
    """Records the videos of one env step into `out_dir` and hands them to a `Logger`.

    `render_env_fn(i)` makes an env whose ``render()`` gives RGB frames (for the eval video);
    `env_fn(i)` one that need not render (for the real sequence an imagination starts from).
    Episodes are seeded like evaluation episode 0 (``seed + EVAL_SEED_OFFSET``). Eval frames
    are shrunk to at most `max_side` pixels and cut at `max_frames`.
    """

    def __init__(
        self,
        render_env_fn: Callable[[int], Any],
        env_fn: Callable[[int], Any],
        seed: int,
        out_dir: str | Path,
        *,
        context: int = 5,
        length: int = 50,
        max_frames: int = 500,
        max_side: int = 128,
    ) -> None:
        self.render_env_fn, self.env_fn = render_env_fn, env_fn
        self.seed = seed + EVAL_SEED_OFFSET
        self.out_dir = Path(out_dir)
        self.context, self.length = context, length
        self.max_frames, self.max_side = max_frames, max_side
        self.eval_on, self.imagine_on = True, True

    def record(self, agent: Agent, step: int, logger: Any, device: torch.device) -> list[Path]:
        """Write this step's videos, log them with ``logger.video``; returns their paths."""
        written = []
        with isolated(agent):
            for name, make in (("eval", self._eval), ("imagination", self._imagination)):
                path = make(agent, self.out_dir / f"{name}_{step:09d}.gif", device)
                if path is not None:
                    logger.video(step, name, path)
                    written.append(path)
        return written

    def _eval(self, agent: Agent, path: Path, device: torch.device) -> Path | None:
        if not self.eval_on:
            return None
        frames = ShrunkFrames(self.max_side)
        try:
            env = self.render_env_fn(0)
            try:
                _episode(agent, env, self.seed, device, frames, self.max_frames)
            finally:
                env.close()
        except (WorldFluxError, NotImplementedError) as err:
            self.eval_on = False
            _notice(f"video: the env cannot render ({_one_line(err)}); no eval videos this run")
            return None
        return write_video(path, frames, fps=15)

    def _imagination(self, agent: Agent, path: Path, device: torch.device) -> Path | None:
        model = agent.model
        if not self.imagine_on:
            return None
        if "obs" not in model.heads:
            self.imagine_on = False
            _notice(f"video: {model.family} has no observation decoder; no imagination videos")
            return None
        env = self.env_fn(0)
        try:
            batch = collect_sequence(agent, env, self.seed, self.length, device)
        finally:
            env.close()
        if batch.shape[1] <= self.context:
            return None  # the episode ended within the context: nothing to predict
        try:
            imagination_video(model, batch, path, context=self.context)
        except WorldFluxError as err:  # e.g. an observation form the video cannot draw
            self.imagine_on = False
            _notice(f"video: no imagination videos this run ({_one_line(err)})")
            return None
        return path


class ShrunkFrames(list[np.ndarray]):
    """A frame list whose ``append`` shrinks (H, W, 3) frames to at most `max_side` pixels."""

    def __init__(self, max_side: int) -> None:
        super().__init__()
        self.max_side = max_side

    def append(self, frame: np.ndarray) -> None:
        from PIL import Image

        frame = np.asarray(frame, dtype=np.uint8)[..., :3]
        h, w = frame.shape[:2]
        scale = self.max_side / max(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        super().append(frame)


def video_recorder(
    every: int,
    seed: int,
    eval_env_fn: Callable[[int], Any] | None,
    video_env_fn: Callable[[int], Any] | None,
    run_dir: str | Path,
) -> VideoRecorder | None:
    """The trainer's recorder: None when `every` is 0; videos need an env (`video_env_fn`, or
    `eval_env_fn`'s envs when None), so a run without one is a `ConfigError`."""
    if every == 0:
        return None
    if eval_env_fn is None:
        raise ConfigError("video_every: videos need an env; pass --env ENV (or set video_every=0)")
    render_fn = video_env_fn or eval_env_fn
    return VideoRecorder(render_fn, eval_env_fn, seed, Path(run_dir) / VIDEO_DIR)


@contextlib.contextmanager
def isolated(agent: Agent) -> Iterator[None]:
    """Run the body in eval mode, then restore the global RNGs, the agent's extra state and
    its modules' modes: whatever the body acts or samples, training continues unchanged."""
    rng = capture_rng()
    extra = copy.deepcopy(agent.extra_state())
    modes = {name: m.training for name, m in agent.modules().items()}
    agent.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for name, module in agent.modules().items():
            module.train(modes[name])
        agent.load_extra_state(extra)
        restore_rng(rng)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _notice(message: str) -> None:
    print(message, file=sys.stderr)
