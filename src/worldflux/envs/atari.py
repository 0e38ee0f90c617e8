"""`AtariEnv`: Atari 2600 games through ale-py with the standard preprocessing.

Needs the ``atari`` extra (``ale-py``, which bundles the ROMs). Preprocessing, after Mnih et al.
(2015) and Machado et al. (2018):

- no-op reset: a uniform number in [1, noop_max] of NOOP actions after each game reset;
- frame skip: each agent action is repeated for `frame_skip` emulator frames, rewards summed, and
  the observation is the pixel-wise max over the last two frames (removes sprite flicker);
- resize to `size` (64x64 RGB, Dreamer) or e.g. 84x84 grayscale with antialiased bilinear;
- sticky actions with probability `sticky` (0.25 in Machado et al.; 0 here by default);
- episodic life (a lost life ends the agent's episode as terminal) off by default;
- rewards unclipped (clipping is an agent choice); game over is ``terminated``; the frame limit
  (`max_frames`, 108k = 30 minutes) is a truncation.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.envs.base import ActionConverter, Env, Step, image_space, resize_image


def rom_id(game: str) -> str:
    """``"MsPacman"`` or ``"ms_pacman"`` -> ``"ms_pacman"`` (ale-py's ROM id)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower() if not game.islower() else game


class AtariEnv(Env):
    """An Atari game (see the module docstring for the preprocessing).

    Args:
        game: ``"Pong"``, ``"MsPacman"`` or the ROM id ``"ms_pacman"``.
        size: (H, W) of observations. grayscale: one luminance channel instead of RGB.
        frame_skip: emulator frames per agent step. noop_max: max no-ops after reset (0: none).
        sticky: probability the emulator repeats the previous action at each frame.
        episodic_life: a lost life ends the agent's episode (terminal); reset continues the game.
        full_action_space: all 18 actions instead of the game's minimal set.
        max_frames: emulator frames before truncation. seed: seed of the first reset.
    """

    def __init__(
        self,
        game: str,
        *,
        size: tuple[int, int] = (64, 64),
        grayscale: bool = False,
        frame_skip: int = 4,
        noop_max: int = 30,
        sticky: float = 0.0,
        episodic_life: bool = False,
        full_action_space: bool = False,
        max_frames: int = 108_000,
        seed: int | None = None,
    ) -> None:
        if frame_skip < 1:
            raise ConfigError(f"frame_skip: expected an integer >= 1, got {frame_skip}")
        if noop_max < 0:
            raise ConfigError(f"noop_max: expected an integer >= 0, got {noop_max}")
        if not 0.0 <= sticky <= 1.0:
            raise ConfigError(f"sticky: expected a probability in [0, 1], got {sticky}")
        try:
            import ale_py
            from ale_py.env import AtariEnv as ALEEnv
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("ale-py is not installed: pip install 'worldflux[atari]'") from e
        rom = rom_id(game)
        if rom not in ale_py.roms.get_all_rom_ids():
            raise ConfigError(f"game: no ROM {rom!r} (from {game!r}) ships with ale-py")
        self.env = ALEEnv(
            game=rom,
            obs_type="rgb",
            frameskip=1,
            repeat_action_probability=sticky,
            full_action_space=full_action_space,
            max_num_frames_per_episode=max_frames,
        )
        self.ale = self.env.ale
        self.size, self.grayscale = (int(size[0]), int(size[1])), grayscale
        self.frame_skip, self.noop_max, self.episodic_life = frame_skip, noop_max, episodic_life
        self._actions = ActionConverter(self.env.action_space, "atari action_space")
        self.action_space = self._actions.space
        self.observation_space = image_space(self.size, 1 if grayscale else 3)
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._done, self._game_over, self._lives = True, True, 0

    def _grab(self) -> np.ndarray:
        if self.grayscale:
            return self.ale.getScreenGrayscale()[:, :, None]  # (H, W) -> (H, W, 1)
        return self.ale.getScreenRGB()

    def _obs(self, frames: list[np.ndarray]) -> np.ndarray:
        frame = np.maximum(frames[-2], frames[-1]) if len(frames) > 1 else frames[-1]
        return resize_image(frame, self.size)

    def reset(self, seed: int | None = None) -> Step:
        """New game with random no-ops (with `episodic_life`, after a lost life: continue)."""
        pending, self._seed = self._seed, None  # the constructor seed applies to one reset only
        seed = pending if seed is None else seed
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self.action_space.seed(seed)
        if seed is None and not self._game_over and self.episodic_life:
            self._done = False
            return Step(
                self._obs([self._grab()]),
                self._actions.zeros(),
                0.0,
                True,
                False,
                False,
                {"lives": self._lives},
            )
        ale_seed = None if seed is None else int(self._rng.integers(2**31))
        self.env.reset(seed=ale_seed)
        for _ in range(int(self._rng.integers(1, self.noop_max + 1)) if self.noop_max else 0):
            _, _, terminated, truncated, _ = self.env.step(0)
            if terminated or truncated:
                self.env.reset()
        self._done, self._game_over, self._lives = False, False, int(self.ale.lives())
        return Step(
            self._obs([self._grab()]),
            self._actions.zeros(),
            0.0,
            True,
            False,
            False,
            {"lives": self._lives},
        )

    def step(self, action: Any) -> Step:
        """Repeat `action` for `frame_skip` frames; observation max-pooled over the last two."""
        if self._done:
            raise SpecError("step: the episode has ended (or never started); call reset() first")
        index, model_action = self._actions(action)
        total, terminated, truncated = 0.0, False, False
        frames: list[np.ndarray] = []
        for i in range(self.frame_skip):
            _, reward, terminated, truncated, _ = self.env.step(index)
            total += float(reward)
            if i >= self.frame_skip - 2 or terminated or truncated:
                frames.append(self._grab())
            if terminated or truncated:
                break
        lives = int(self.ale.lives())
        life_lost = self.episodic_life and 0 < lives < self._lives
        self._lives = lives
        self._game_over = bool(terminated or truncated)
        is_terminal = bool(terminated) or life_lost
        self._done = self._game_over or life_lost
        info = {"lives": lives, "life_lost": life_lost}
        return Step(self._obs(frames), model_action, total, False, is_terminal, self._done, info)

    def get_state(self) -> dict[str, Any]:
        """Snapshot for exact resume: the emulator (with its sticky-action RNG) and our RNG."""
        ale_state = self.ale.cloneState(include_rng=True).serialize()
        return {
            "ale": np.frombuffer(ale_state, np.uint8).copy(),
            "rng": self._rng.bit_generator.state,
            "lives": self._lives,
            "done": self._done,
            "game_over": self._game_over,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state` snapshot (on an env built with the same arguments)."""
        from ale_py import ALEState

        data = np.asarray(state["ale"], np.uint8).tobytes()
        self.ale.restoreState(ALEState(data))
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._lives, self._seed = int(state["lives"]), None
        self._done, self._game_over = bool(state["done"]), bool(state["game_over"])

    def render(self) -> np.ndarray:
        """The current full-resolution RGB screen (210, 160, 3)."""
        return self.ale.getScreenRGB()

    def close(self) -> None:
        self.env.close()
