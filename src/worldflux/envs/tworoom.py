"""Two rooms joined by a door: a small 2-D goal-reaching task with 64x64 RGB observations.

The world is the unit square. A vertical wall of thickness `wall_width` at x = 0.5 splits it into a
left and a right room; a gap of height `door_height` centred at `door_y` joins them. The agent is a
disc of radius `agent_radius`; an action in [-1, 1]^2 moves it by at most `max_step` per axis.
Motion is integrated in `substeps` axis-separated sub-moves so the agent slides along walls and can
never tunnel through them (each sub-move is shorter than the wall is thick).

Observation: (64, 64, 3) uint8, rendered with numpy (light floor, dark walls, red agent with an
anti-aliased edge). The goal is NOT drawn; `goal_observation()` renders the agent at the goal, which
is what a goal-conditioned planner encodes. Reward is 1 on reaching the goal (distance <=
`success_radius`), which also terminates the episode; `max_steps` truncates it.
`info` carries ``pos``, ``goal``, ``distance``, ``success``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldflux.core.exceptions import ConfigError

ENV_ID = "worldflux/TwoRoom-v0"
ROOMS = ("left", "right", "any")
GOAL_ROOMS = ("other", "same", "any")
FLOOR = np.array([235, 235, 225], np.float32)
WALL = np.array([40, 40, 60], np.float32)
AGENT = np.array([220, 30, 30], np.float32)


class TwoRoomEnv(gym.Env[np.ndarray, np.ndarray]):
    """Gymnasium env; see the module docstring. Deterministic given `reset(seed=...)`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        size: int = 64,  # image side in pixels
        max_step: float = 0.075,  # largest move per axis per step (world units, world = [0, 1]^2)
        wall_width: float = 0.04,  # thickness of the dividing wall
        door_y: float = 0.5,  # centre of the door gap
        door_height: float = 0.2,  # height of the door gap
        agent_radius: float = 0.035,  # agent disc radius (collision and drawing)
        success_radius: float = 0.08,  # goal reached when the distance is at most this
        max_steps: int = 100,  # truncation horizon
        start_room: str = "left",  # where starts are sampled: left | right | any
        goal_room: str = "other",  # goal relative to the start room: other | same | any
        substeps: int = 4,  # axis-separated sub-moves per step (no tunnelling)
        render_mode: str | None = "rgb_array",
    ) -> None:
        _check(size >= 16, "size", ">= 16", size)
        _check(0.0 < max_step <= 0.25, "max_step", "in (0, 0.25]", max_step)
        _check(0.0 < wall_width < 0.2, "wall_width", "in (0, 0.2)", wall_width)
        _check(0.0 < agent_radius < 0.1, "agent_radius", "in (0, 0.1)", agent_radius)
        _check(door_height > 2 * agent_radius, "door_height", "> 2*agent_radius", door_height)
        _check(door_height / 2 < door_y < 1 - door_height / 2, "door_y", "door inside", door_y)
        _check(success_radius > 0.0, "success_radius", "> 0", success_radius)
        _check(max_steps >= 1, "max_steps", ">= 1", max_steps)
        _check(start_room in ROOMS, "start_room", f"one of {ROOMS}", start_room)
        _check(goal_room in GOAL_ROOMS, "goal_room", f"one of {GOAL_ROOMS}", goal_room)
        _check(max_step / substeps < wall_width, "substeps", "max_step/substeps < wall", substeps)
        self.size, self.max_step, self.wall_width = size, max_step, wall_width
        self.door_y, self.door_height, self.agent_radius = door_y, door_height, agent_radius
        self.success_radius, self.max_steps, self.substeps = success_radius, max_steps, substeps
        self.start_room, self.goal_room, self.render_mode = start_room, goal_room, render_mode
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._background = self._draw_background()
        self.pos = np.array([0.25, 0.5])
        self.goal = np.array([0.75, 0.5])
        self._t = 0

    # --- geometry -----------------------------------------------------------------------------

    def blocked(self, pos: np.ndarray) -> bool:
        """Whether the agent disc at `pos` (2,) overlaps a wall or leaves the square."""
        x, y = float(pos[0]), float(pos[1])
        r = self.agent_radius
        if not (r <= x <= 1 - r and r <= y <= 1 - r):
            return True
        in_wall_x = abs(x - 0.5) < self.wall_width / 2 + r
        lo, hi = self.door_y - self.door_height / 2, self.door_y + self.door_height / 2
        return in_wall_x and not (lo + r <= y <= hi - r)

    def blocked_batch(self, pos: np.ndarray) -> np.ndarray:
        """`blocked` for many positions (N, 2) -> (N,) bool."""
        x, y, r = pos[:, 0], pos[:, 1], self.agent_radius
        outside = (x < r) | (x > 1 - r) | (y < r) | (y > 1 - r)
        lo, hi = self.door_y - self.door_height / 2, self.door_y + self.door_height / 2
        in_wall = (np.abs(x - 0.5) < self.wall_width / 2 + r) & ~((lo + r <= y) & (y <= hi - r))
        return outside | in_wall

    def move_batch(self, pos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """`move` for many agents at once: pos (N, 2), action (N, 2) -> new pos (N, 2)."""
        delta = np.clip(action.astype(np.float64), -1.0, 1.0) * (self.max_step / self.substeps)
        p = np.array(pos, np.float64)
        for _ in range(self.substeps):
            for axis in (0, 1):
                trial = p.copy()
                trial[:, axis] += delta[:, axis]
                p = np.where(self.blocked_batch(trial)[:, None], p, trial)
        return p

    @staticmethod
    def room_of(pos: np.ndarray) -> str:
        """'left' or 'right' (the door belongs to the side its centre is on)."""
        return "left" if float(pos[0]) < 0.5 else "right"

    def sample_free(self, rng: np.random.Generator, room: str) -> np.ndarray:
        """A uniformly random free position (2,) in `room` (left, right or any)."""
        lo_x, hi_x = {"left": (0.0, 0.5), "right": (0.5, 1.0), "any": (0.0, 1.0)}[room]
        while True:
            p = np.array([rng.uniform(lo_x, hi_x), rng.uniform(0.0, 1.0)])
            if not self.blocked(p) and abs(p[0] - 0.5) > self.wall_width / 2 + self.agent_radius:
                return p

    def move(self, pos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Apply one clipped action to `pos` with wall sliding; returns the new position (2,)."""
        delta = np.clip(np.asarray(action, np.float64), -1.0, 1.0) * (self.max_step / self.substeps)
        p = np.array(pos, np.float64)
        for _ in range(self.substeps):
            for axis in (0, 1):
                trial = p.copy()
                trial[axis] += delta[axis]
                if not self.blocked(trial):
                    p = trial
        return p

    # --- rendering ----------------------------------------------------------------------------

    def _draw_background(self) -> np.ndarray:
        n = self.size
        c = (np.arange(n) + 0.5) / n  # pixel centres in world units
        xx, yy = np.meshgrid(c, c[::-1])  # row 0 is the top (y = 1)
        wall = np.abs(xx - 0.5) < self.wall_width / 2
        door = np.abs(yy - self.door_y) < self.door_height / 2
        img = np.where((wall & ~door)[..., None], WALL, FLOOR)
        return img.astype(np.float32)  # (H, W, 3)

    def render_at(self, pos: np.ndarray) -> np.ndarray:
        """The observation (size, size, 3) uint8 with the agent at `pos` (2,)."""
        n = self.size
        img = self._background.copy()
        r_px = self.agent_radius * n
        cx, cy = float(pos[0]) * n, (1.0 - float(pos[1])) * n  # pixel coordinates (col, row)
        x0, x1 = max(int(cx - r_px - 1), 0), min(int(cx + r_px + 2), n)
        y0, y1 = max(int(cy - r_px - 1), 0), min(int(cy + r_px + 2), n)
        cols = np.arange(x0, x1) + 0.5
        rows = np.arange(y0, y1) + 0.5
        dist = np.sqrt((cols[None, :] - cx) ** 2 + (rows[:, None] - cy) ** 2)
        alpha = np.clip(r_px + 0.5 - dist, 0.0, 1.0)[..., None]  # anti-aliased edge
        patch = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = patch * (1 - alpha) + AGENT * alpha
        return img.astype(np.uint8)

    def render(self) -> np.ndarray:
        return self.render_at(self.pos)

    def goal_observation(self) -> np.ndarray:
        """What the agent would see standing on the goal: (size, size, 3) uint8."""
        return self.render_at(self.goal)

    # --- gymnasium API ------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        d = float(np.linalg.norm(self.pos - self.goal))
        return {
            "pos": self.pos.copy(),
            "goal": self.goal.copy(),
            "distance": d,
            "success": d <= self.success_radius,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Sample start and goal (or take ``options={"start": (x, y), "goal": (x, y)}``)."""
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        if "start" in options:
            self.pos = self._given(options, "start")
        else:
            self.pos = self.sample_free(rng, self.start_room)
        if "goal" in options:
            self.goal = self._given(options, "goal")
        else:
            here = self.room_of(self.pos)
            other = "right" if here == "left" else "left"
            room = {"other": other, "same": here, "any": "any"}[self.goal_room]
            self.goal = self.sample_free(rng, room)
            while np.linalg.norm(self.goal - self.pos) <= self.success_radius:
                self.goal = self.sample_free(rng, room)
        self._t = 0
        return self.render_at(self.pos), self._info()

    def _given(self, options: dict[str, Any], key: str) -> np.ndarray:
        p = np.asarray(options[key], np.float64)
        if p.shape != (2,) or self.blocked(p):
            raise ConfigError(
                f"options[{key!r}]: expected a free (x, y) position, got {options[key]!r}"
            )
        return p

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, np.float64)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ConfigError(f"action: expected 2 finite floats, got {action!r}")
        self.pos = self.move(self.pos, a)
        self._t += 1
        info = self._info()
        terminated = bool(info["success"])
        truncated = self._t >= self.max_steps and not terminated
        return self.render_at(self.pos), float(terminated), terminated, truncated, info


def expert_action(env: TwoRoomEnv, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """A scripted action (2,) in [-1, 1] heading for `goal`, through the door when needed."""
    target = np.asarray(goal, np.float64)
    if env.room_of(pos) != env.room_of(goal):
        side = -1.0 if env.room_of(pos) == "left" else 1.0
        margin = env.door_height / 2 - env.agent_radius - 0.01
        aligned = abs(float(pos[1]) - env.door_y) < margin
        near = abs(float(pos[0]) - 0.5) < env.wall_width / 2 + env.agent_radius + 0.05
        if aligned and near:  # inside or in front of the door: cross it
            target = np.array([0.5 - side * 0.12, env.door_y])
        else:  # line up in front of the door first
            target = np.array([0.5 + side * 0.1, env.door_y])
    return np.clip((target - pos) / env.max_step, -1.0, 1.0)


def register_tworoom() -> None:
    """Register ``worldflux/TwoRoom-v0`` with gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="worldflux.envs.tworoom:TwoRoomEnv")


def _check(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}")
