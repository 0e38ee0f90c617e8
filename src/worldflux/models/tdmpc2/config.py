"""TD-MPC2 configuration and presets.

Defaults follow the official code (nicklashansen/tdmpc2, ``tdmpc2/config.yaml`` and the
``MODEL_SIZE`` table in ``tdmpc2/common/__init__.py``) and Hansen et al., "TD-MPC2: Scalable,
Robust World Models for Continuous Control" (ICLR 2024), Table 6 / Appendix H.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from worldflux.core.exceptions import ConfigError


@dataclass(frozen=True)
class TDMPC2Config:
    """Every TD-MPC2 hyperparameter; see the module docstring for sources."""

    # --- architecture -------------------------------------------------------------------------
    enc_dim: int = 256  # hidden width of the state encoder
    num_enc_layers: int = 2  # encoder depth (hidden layers = max(num_enc_layers - 1, 1))
    mlp_dim: int = 512  # hidden width of dynamics, reward, termination, policy and Q MLPs
    latent_dim: int = 512  # size of the SimNorm latent z
    num_q: int = 5  # Q-functions in the ensemble
    simnorm_dim: int = 8  # SimNorm group size (softmax within groups of 8)
    num_channels: int = 32  # channels of the 64x64 pixel encoder's convolutions
    shift_pad: int = 3  # random-shift augmentation padding (official ShiftAug default: 3)
    dropout: float = 0.01  # dropout in the first layer of every Q-function
    num_bins: int = 101  # two-hot bins for reward and Q regression
    vmin: float = -10.0  # lowest bin, in symlog space
    vmax: float = 10.0  # highest bin, in symlog space
    log_std_min: float = -10.0  # policy log-std lower bound (tanh-squashed into the range)
    log_std_max: float = 2.0  # policy log-std upper bound
    episodic: bool = False  # learn a termination head (tasks with true terminal states)
    # --- losses -------------------------------------------------------------------------------
    horizon: int = 3  # latent rollout length of the loss and of planning
    rho: float = 0.5  # temporal weight rho**t of each step's loss
    consistency_coef: float = 20.0  # latent consistency loss weight
    reward_coef: float = 0.1  # reward loss weight
    value_coef: float = 0.1  # value (Q) loss weight
    termination_coef: float = 1.0  # termination loss weight (episodic only)
    entropy_coef: float = 1e-4  # policy entropy weight (entropy is scaled by action dim)
    tau: float = 0.01  # EMA rate of the target Qs and of the running Q scale
    # --- discount heuristic -------------------------------------------------------------------
    episode_length: int = 1000  # task episode length; sets the discount unless given
    discount_denom: float = 5.0  # discount = (L/denom - 1) / (L/denom), clipped
    discount_min: float = 0.95  # lower clip of the discount heuristic
    discount_max: float = 0.995  # upper clip of the discount heuristic
    discount_override: float | None = None  # use this discount instead of the heuristic
    # --- optimisation -------------------------------------------------------------------------
    lr: float = 3e-4  # Adam learning rate (model and policy)
    enc_lr_scale: float = 0.3  # encoder learning rate = lr * enc_lr_scale
    grad_clip_norm: float = 20.0  # global grad-norm clip of model and policy
    pi_eps: float = 1e-5  # Adam epsilon of the policy optimiser
    # --- planning (MPPI) ----------------------------------------------------------------------
    iterations: int = 6  # MPPI iterations per plan
    num_samples: int = 512  # action sequences sampled per iteration
    num_elites: int = 64  # elites that refit the sampling distribution
    num_pi_trajs: int = 24  # sequences drawn from the policy prior
    min_std: float = 0.05  # lower clamp of the sampling std
    max_std: float = 2.0  # upper clamp (and initial value) of the sampling std
    temperature: float = 0.5  # MPPI score temperature

    def __post_init__(self) -> None:
        positive_ints = ("enc_dim", "num_enc_layers", "mlp_dim", "latent_dim", "num_q",
                         "simnorm_dim", "num_channels", "horizon", "episode_length",
                         "iterations", "num_samples", "num_elites")  # fmt: skip
        for name in positive_ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"TDMPC2Config.{name}: expected an int >= 1, got {v!r}")
        self._check(
            self.latent_dim % self.simnorm_dim == 0,
            "latent_dim",
            f"a multiple of simnorm_dim={self.simnorm_dim}",
            self.latent_dim,
        )
        self._check(self.num_q >= 2, "num_q", ">= 2 (TD targets use 2 of them)", self.num_q)
        self._check(self.num_bins >= 2, "num_bins", ">= 2", self.num_bins)
        self._check(self.vmin < self.vmax, "vmin/vmax", "vmin < vmax", (self.vmin, self.vmax))
        self._check(
            self.log_std_min < self.log_std_max,
            "log_std_min/log_std_max",
            "min < max",
            (self.log_std_min, self.log_std_max),
        )
        self._check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        self._check(0.0 < self.rho <= 1.0, "rho", "in (0, 1]", self.rho)
        self._check(0.0 < self.tau <= 1.0, "tau", "in (0, 1]", self.tau)
        self._check(self.shift_pad >= 0, "shift_pad", ">= 0", self.shift_pad)
        for name in (
            "consistency_coef",
            "reward_coef",
            "value_coef",
            "termination_coef",
            "entropy_coef",
            "enc_lr_scale",
            "grad_clip_norm",
            "pi_eps",
            "discount_denom",
            "temperature",
        ):
            self._check(getattr(self, name) >= 0.0, name, ">= 0", getattr(self, name))
        self._check(self.grad_clip_norm > 0, "grad_clip_norm", "> 0", self.grad_clip_norm)
        self._check(_is_lr(self.lr), "lr", "a float in [0, 1]", self.lr)
        self._check(
            0.0 < self.discount_min <= self.discount_max < 1.0,
            "discount_min/discount_max",
            "0 < min <= max < 1",
            (self.discount_min, self.discount_max),
        )
        if self.discount_override is not None:
            self._check(
                0.0 < self.discount_override <= 1.0,
                "discount_override",
                "in (0, 1]",
                self.discount_override,
            )
        self._check(
            self.num_elites <= self.num_samples,
            "num_elites",
            f"<= num_samples={self.num_samples}",
            self.num_elites,
        )
        self._check(
            0 <= self.num_pi_trajs < self.num_samples,
            "num_pi_trajs",
            f"in [0, num_samples={self.num_samples})",
            self.num_pi_trajs,
        )
        self._check(
            0.0 < self.min_std <= self.max_std,
            "min_std/max_std",
            "0 < min <= max",
            (self.min_std, self.max_std),
        )

    @staticmethod
    def _check(ok: bool, name: str, expected: str, got: object) -> None:
        if not ok:
            raise ConfigError(f"TDMPC2Config.{name}: expected {expected}, got {got!r}")

    @property
    def discount(self) -> float:
        """The official heuristic: ((L/5) - 1) / (L/5) clipped to [0.95, 0.995], or the override."""
        if self.discount_override is not None:
            return self.discount_override
        frac = self.episode_length / self.discount_denom
        if frac <= 0:
            return self.discount_min
        return min(max((frac - 1) / frac, self.discount_min), self.discount_max)

    def describe(self) -> dict[str, object]:
        """The config as a JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _is_lr(value: object) -> bool:
    """A learning rate in [0, 1]: 0 freezes the weights (allowed, e.g. to show that learning
    depends on them); NaN, inf and anything above 1 are typos."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


# Widths of the published model sizes (encoder/MLP/latent/encoder layers/Qs), from the
# official MODEL_SIZE table. `debug` is ours: tiny, for tests.
PRESETS: dict[str, TDMPC2Config] = {
    "debug": TDMPC2Config(
        enc_dim=32,
        mlp_dim=32,
        latent_dim=16,
        num_enc_layers=2,
        num_q=2,
        num_channels=4,
        num_bins=21,
        iterations=2,
        num_samples=32,
        num_elites=8,
        num_pi_trajs=4,
    ),
    "1m": TDMPC2Config(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    "5m": TDMPC2Config(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    "19m": TDMPC2Config(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    "48m": TDMPC2Config(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    "317m": TDMPC2Config(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}
