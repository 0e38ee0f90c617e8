"""Benchmark suites: the settings each reference implementation uses on a suite, as run overrides.

``worldflux train tdmpc2:1m --env dmc:cartpole-balance --suite dmc_proprio`` (and
``benchmarks/learn.py ... --suite dmc_proprio``) put a suite's overrides before the command's own
``key=value`` items, so an explicit item still wins. Every suite states how its steps are counted:
``steps``, ``seed_steps``, ``eval_every``... count *agent steps* (one action, repeated
``action_repeat`` times in the simulator), which is how both references count DMC and Atari100k
budgets; the result JSONs record the unit and the repeat.

Sources (facts, cited; no code copied):

- TD-MPC2: nicklashansen/tdmpc2, ``tdmpc2/config.yaml`` (every model field, equal to our
  presets), ``envs/dmcontrol.py`` (action repeat 2, so a DMC episode is 500 agent steps),
  ``common/parser.py`` (``seed_steps = max(1000, 5 * episode_length)`` = 2,500, and the discount
  heuristic on the agent-step episode length: 500 -> 0.99), ``trainer/online_trainer.py`` (at the
  step seeding ends it makes ``seed_steps`` updates, then one per step), ``tdmpc2.py`` (2 extra
  MPPI iterations when the action has >= 20 dims: applied by our TD-MPC2 agent on any task).
- DreamerV3: danijar/dreamerv3 (``configs.yaml``: DMC ``repeat: 2``, ``dmc_proprio`` and
  ``dmc_vision`` train ratio 512, ``atari100k`` repeat 4, no sticky actions, train ratio 1024, 1
  env; the published DMC scores count agent steps), and where our DreamerV3 defaults follow the
  paper rather than the current code, the current code's values (see
  ``models/dreamerv3/README.md``): KL dynamics scale 1.0, the continue-discounted critic target,
  the replay value loss 0.3, the LaProp optimiser, and norm epsilon 1e-4 (``embodied/jax/nets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worldflux.core.exceptions import ConfigError

AGENT_STEPS = "agent steps (each repeats the action `action_repeat` times in the simulator)"


@dataclass(frozen=True)
class Suite:
    """One suite: per model family, the ``key=value`` overrides that match its reference."""

    name: str
    about: str  # one line: what it is and where the settings come from
    action_repeat: int
    step_unit: str
    families: dict[str, list[str]] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)  # where a CPU variant departs, and why

    def overrides(self, model: str) -> list[str]:
        """The overrides for ``family:preset`` `model`; a `ConfigError` for a family without one."""
        family = model.partition(":")[0]
        if family not in self.families:
            raise ConfigError(
                f"suite: {self.name!r} has no settings for {family!r} (it has "
                f"{sorted(self.families)}); drop --suite or use another model"
            )
        return list(self.families[family])


_TDMPC2_DMC = [
    "env.action_repeat=2",
    "episode_length=500",  # agent steps per DMC episode: sets the discount heuristic to 0.99
    "seed_steps=2500",  # max(1000, 5 * episode_length)
    "seed_updates=2500",  # the update burst on the seed data
    "eval_episodes=10",
]
_DREAMER_CODE = [  # the current official code's values where our defaults follow the paper
    "kl_dyn_scale=1.0",
    "cont_discount_target=true",
    "repval_scale=0.3",
    "optimizer=laprop",
    "norm_eps=1e-4",
]

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "dmc_proprio",
            "DeepMind Control from joint states, as TD-MPC2 and DreamerV3 run it",
            action_repeat=2,
            step_unit=AGENT_STEPS,
            families={
                "tdmpc2": _TDMPC2_DMC,
                "dreamerv3": ["env.action_repeat=2", "train_ratio=512", *_DREAMER_CODE],
            },
        ),
        Suite(
            "dmc_vision",
            "DeepMind Control from 64x64 pixels, as TD-MPC2 and DreamerV3 run it",
            action_repeat=2,
            step_unit=AGENT_STEPS,
            families={
                "tdmpc2": ["env.image=true", *_TDMPC2_DMC],
                "dreamerv3": [
                    "env.image=true",
                    "env.action_repeat=2",
                    "train_ratio=512",
                    *_DREAMER_CODE,
                ],
            },  # fmt: skip
        ),
        Suite(
            "atari100k",
            "Atari 100k (400k frames) from 64x64 colour frames, as DreamerV3 runs it",
            action_repeat=4,
            step_unit=AGENT_STEPS,
            families={
                "dreamerv3": [
                    "env.action_repeat=4",
                    "env.sticky=0.0",
                    "num_envs=1",
                    "train_ratio=1024",
                    *_DREAMER_CODE,
                ],
            },  # fmt: skip
        ),
        Suite(
            "dmc_proprio_cpu",
            "dmc_proprio with DreamerV3's train ratio cut to fit 2 CPU cores (see deviations)",
            action_repeat=2,
            step_unit=AGENT_STEPS,
            families={
                "tdmpc2": _TDMPC2_DMC,
                "dreamerv3": [
                    "env.action_repeat=2",
                    "train_ratio=64",
                    *_DREAMER_CODE,
                    "laprop_lr=3.2e-4",
                    "actor_grad_cont=dynamics",
                ],  # fmt: skip
            },
            deviations=[
                "dreamerv3 train_ratio 64 instead of 512: one 16x64 update costs about 1 s on "
                "one core, so 512 (0.5 updates per agent step) is ~14 h per 100k steps; 64 "
                "makes 1 update every 16 agent steps.",
                "dreamerv3 laprop_lr 3.2e-4 = 4e-5 x 8 (= 512 / 64): LaProp, like Adam, moves "
                "each weight by about the learning rate per update, so 8x fewer updates need 8x "
                "the rate to move the weights as far. At 4e-5 cartpole-balance stayed at or "
                "below random for 50k steps (223 at 50k); at 3.2e-4 it reached 612 at 30k "
                "(seed 0, with the gradient below; docs/benchmarks.md, DeepMind Control).",
                "dreamerv3 actor_grad_cont=dynamics (the paper's first version: returns "
                "backpropagated through the model for continuous actions) instead of the "
                "current code's REINFORCE: a lower-variance actor gradient per update.",
            ],
        ),
    )
}


def get_suite(name: str) -> Suite:
    """The suite `name`; a `ConfigError` listing the known ones otherwise."""
    if name not in SUITES:
        raise ConfigError(f"suite: expected one of {sorted(SUITES)}, got {name!r}")
    return SUITES[name]


def suite_overrides(name: str | None, model: str, items: list[str]) -> list[str]:
    """`items` preceded by suite `name`'s overrides for `model` (no suite: `items` unchanged)."""
    return items if name is None else [*get_suite(name).overrides(model), *items]
