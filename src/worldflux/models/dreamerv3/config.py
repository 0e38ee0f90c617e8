"""`DreamerV3Config` and the named presets.

Sizes follow the official configs (danijar/dreamerv3 ``dreamerv3/configs.yaml``: ``size1m`` ...
``size400m`` set rssm deter/hidden/classes, CNN depth and MLP units). Where the paper (arXiv
2301.04104 v1) and the current official code differ, the default is named in the field comment
and explained in README.md next to this file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from worldflux.core.exceptions import ConfigError


@dataclass(frozen=True)
class DreamerV3Config:
    """Every DreamerV3 hyperparameter. Validated on construction (raises `ConfigError`)."""

    # --- RSSM ---
    deter: int = 2048  # GRU state size (split into `blocks` blocks)
    hidden: int = 256  # width of the RSSM's input/prior/posterior layers
    stoch: int = 32  # number of categorical latents
    classes: int = 16  # classes per categorical latent
    blocks: int = 8  # blocks of the block-diagonal GRU
    unimix: float = 0.01  # uniform mixture on latent and actor categoricals (1%)
    free_nats: float = 1.0  # free bits: each KL term is clipped below at this many nats
    kl_dyn_scale: float = 0.5  # beta_dyn (paper 0.5; current code 1.0)
    kl_rep_scale: float = 0.1  # beta_rep
    imglayers: int = 2  # hidden layers of the prior (current code)
    # --- encoder / decoder / heads ---
    units: int = 256  # MLP width of encoder, decoder and all heads
    depth: int = 16  # CNN base depth; stage i has depth * cnn_mults[i] channels
    cnn_mults: tuple[int, ...] = (2, 3, 4, 4)  # one stride-2 stage each (64x64 -> 4x4)
    kernel: int = 5  # CNN kernel size
    cnn_strided: bool = False  # False: conv + max-pool (current code); True: stride-2 convs
    enc_layers: int = 3  # hidden layers of the vector encoder
    dec_layers: int = 3  # hidden layers of the vector decoder
    dec_blocks: int = 8  # block groups of the image decoder's deter -> space projection
    head_layers: int = 1  # hidden layers of the reward and continue heads
    bins: int = 255  # two-hot bins of reward and critic, symexp-spaced over [-20, 20]
    norm: str = "rms"  # 'rms' or 'layer'
    norm_eps: float = 1e-5  # epsilon of every norm layer (current code: 1e-4; see README)
    act: str = "silu"  # activation everywhere
    rec_scale: float = 1.0  # loss scale of observation reconstruction
    rew_scale: float = 1.0  # loss scale of the reward head
    con_scale: float = 1.0  # loss scale of the continue head
    # --- actor-critic ---
    ac_layers: int = 3  # hidden layers of actor and critic
    imag_horizon: int = 15  # imagination horizon H
    horizon: int = 333  # discount gamma = 1 - 1/horizon (0.997)
    lam: float = 0.95  # lambda of the lambda-returns
    cont_discount_target: bool = False  # True: continue target (1-term)*gamma, as current code
    actor_grad_cont: str = "reinforce"  # continuous actions: 'reinforce' (code) or 'dynamics'
    actor_entropy: float = 3e-4  # entropy regulariser scale eta
    actor_minstd: float = 0.1  # bounded-normal actor: minimum std
    actor_maxstd: float = 1.0  # bounded-normal actor: maximum std
    retnorm_rate: float = 0.01  # EMA rate of the percentile return scale (decay 0.99)
    retnorm_limit: float = 1.0  # returns are divided by max(limit, P95 - P5)
    retnorm_low: float = 5.0  # lower percentile
    retnorm_high: float = 95.0  # upper percentile
    slow_critic_rate: float = 0.02  # EMA rate of the slow critic
    slow_critic_reg: float = 1.0  # scale of the critic's regulariser toward the slow critic
    repval_scale: float = 0.0  # replay critic loss (current code 0.3; paper v1 has none)
    # --- optimisation (see README) ---
    optimizer: str = "adam"  # 'adam' (paper v1, settings below) or 'laprop' (current code)
    wm_lr: float = 1e-4  # world-model learning rate
    wm_eps: float = 1e-8  # world-model Adam epsilon
    wm_grad_clip: float = 1000.0  # world-model global grad-norm clip
    ac_lr: float = 3e-5  # actor and critic learning rate
    ac_eps: float = 1e-5  # actor and critic Adam epsilon
    ac_grad_clip: float = 100.0  # actor and critic global grad-norm clip
    laprop_lr: float = 4e-5  # LaProp: learning rate of every learner
    laprop_eps: float = 1e-20  # LaProp: epsilon inside the RMS normalisation
    agc: float = 0.3  # LaProp: adaptive gradient clipping, ||g|| <= agc * ||p||
    warmup: int = 1000  # LaProp: linear learning-rate warm-up steps

    def __post_init__(self) -> None:
        positive = ("deter", "hidden", "stoch", "classes", "blocks", "units", "depth", "kernel")
        for name in (*positive, "imag_horizon", "horizon", "bins", "dec_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"DreamerV3Config.{name}: expected an int >= 1, got {value!r}")
        if self.deter % self.blocks:
            raise ConfigError(
                f"DreamerV3Config.deter: expected a multiple of blocks={self.blocks}, "
                f"got {self.deter}"
            )
        if self.deter % self.dec_blocks:
            raise ConfigError(
                f"DreamerV3Config.dec_blocks: expected a divisor of deter={self.deter}, "
                f"got {self.dec_blocks}"
            )
        if self.classes < 2 or self.bins < 3 or self.bins % 2 == 0:
            raise ConfigError(
                f"DreamerV3Config: expected classes >= 2 and an odd bins >= 3, "
                f"got classes={self.classes} bins={self.bins}"
            )
        self._check_ranges()

    def _check_ranges(self) -> None:
        unit = ("unimix", "lam", "retnorm_rate", "slow_critic_rate")
        for name in unit:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"DreamerV3Config.{name}: expected a value in [0, 1], got {v}")
        nonneg: tuple[str, ...] = (
            "free_nats",
            "kl_dyn_scale",
            "kl_rep_scale",
            "rec_scale",
            "rew_scale",
        )
        nonneg += ("con_scale", "actor_entropy", "slow_critic_reg", "retnorm_limit", "repval_scale")
        nonneg += ("imglayers", "enc_layers", "dec_layers", "head_layers", "ac_layers")
        for name in nonneg:
            v = getattr(self, name)
            if v < 0:
                raise ConfigError(f"DreamerV3Config.{name}: expected a value >= 0, got {v}")
        self._check_choices()

    def _check_choices(self) -> None:
        for name in ("wm_lr", "ac_lr", "laprop_lr"):
            value = getattr(self, name)
            if not _is_lr(value):
                raise ConfigError(
                    f"DreamerV3Config.{name}: expected a float in [0, 1], got {value!r}"
                )
        for name in ("wm_eps", "wm_grad_clip", "ac_eps", "ac_grad_clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"DreamerV3Config.{name}: expected > 0, got {getattr(self, name)}"
                )
        if self.optimizer not in ("adam", "laprop"):
            raise ConfigError(
                f"DreamerV3Config.optimizer: expected 'adam' or 'laprop', got {self.optimizer!r}"
            )
        if self.laprop_eps < 0 or self.agc < 0 or self.warmup < 0:
            raise ConfigError(
                "DreamerV3Config: expected laprop_eps, agc, warmup >= 0, got "
                f"{self.laprop_eps}, {self.agc}, {self.warmup}"
            )
        if self.actor_grad_cont not in ("reinforce", "dynamics"):
            raise ConfigError(
                "DreamerV3Config.actor_grad_cont: expected 'reinforce' or 'dynamics', "
                f"got {self.actor_grad_cont!r}"
            )
        if not 0.0 < self.actor_minstd <= self.actor_maxstd:
            raise ConfigError(
                "DreamerV3Config.actor_minstd/actor_maxstd: expected 0 < min <= max, got "
                f"{self.actor_minstd}, {self.actor_maxstd}"
            )
        if not 0.0 <= self.retnorm_low < self.retnorm_high <= 100.0:
            raise ConfigError(
                "DreamerV3Config.retnorm_low/retnorm_high: expected 0 <= low < high <= 100, "
                f"got {self.retnorm_low}, {self.retnorm_high}"
            )
        if not 0.0 < self.norm_eps < 1.0:
            raise ConfigError(
                f"DreamerV3Config.norm_eps: expected a float in (0, 1), got {self.norm_eps!r}"
            )
        if self.norm not in ("rms", "layer"):
            raise ConfigError(f"DreamerV3Config.norm: expected 'rms' or 'layer', got {self.norm!r}")
        if not self.cnn_mults or any(m < 1 for m in self.cnn_mults):
            raise ConfigError(
                f"DreamerV3Config.cnn_mults: expected positive ints, got {self.cnn_mults}"
            )

    @property
    def gamma(self) -> float:
        """Discount 1 - 1/horizon."""
        return 1.0 - 1.0 / self.horizon

    @property
    def cnn_depths(self) -> tuple[int, ...]:
        """Channels of each CNN stage."""
        return tuple(self.depth * m for m in self.cnn_mults)


def _is_lr(value: object) -> bool:
    """A learning rate in [0, 1]: 0 freezes the weights (allowed, e.g. to show that learning
    depends on them); NaN, inf and anything above 1 are typos."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _size(deter: int, hidden: int, classes: int, depth: int, units: int) -> DreamerV3Config:
    return DreamerV3Config(deter=deter, hidden=hidden, classes=classes, depth=depth, units=units)


PRESETS: dict[str, DreamerV3Config] = {
    # tiny, for tests: every code path, a fraction of a second per step
    "debug": replace(
        _size(deter=64, hidden=32, classes=4, depth=2, units=32),
        blocks=4,
        dec_blocks=4,
        enc_layers=1,
        dec_layers=1,
        ac_layers=2,
    ),
    "size1m": _size(deter=512, hidden=64, classes=4, depth=4, units=64),
    "size12m": _size(deter=2048, hidden=256, classes=16, depth=16, units=256),
    "size25m": _size(deter=3072, hidden=384, classes=24, depth=24, units=384),
    "size50m": _size(deter=4096, hidden=512, classes=32, depth=32, units=512),
    "size100m": _size(deter=6144, hidden=768, classes=48, depth=48, units=768),
    "size200m": _size(deter=8192, hidden=1024, classes=64, depth=64, units=1024),
    "size400m": _size(deter=12288, hidden=1536, classes=96, depth=96, units=1536),
}
