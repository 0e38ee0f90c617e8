"""`JEPAConfig` and the named presets `debug`, `small`, `base`.

References for the defaults: LeWM (end-to-end JEPA world model with SIGReg; MSE latent prediction,
lambda ~0.1 on SIGReg, AdaLN action conditioning, a short frame history), LeJEPA (SIGReg with the
Epps-Pulley statistic, 17 integration knots on t in [0, 3], doubled by symmetry: the reference
``SIGReg`` of LeJEPA and of LeWM's ``module.py`` uses ``torch.linspace(0, 3, 17)``), I-JEPA /
BYOL (EMA target encoder with stop-gradient, decay 0.996-0.999) and PLDM (VICReg-regularised
latent dynamics).
"""

from __future__ import annotations

from dataclasses import dataclass

from worldflux.core.exceptions import ConfigError

REGULARIZERS = ("sigreg", "vicreg", "ema", "none")
CONDITIONING = ("adaln", "concat")


@dataclass(frozen=True)
class JEPAConfig:
    """Hyperparameters of the JEPA world model. Validated on construction (`ConfigError`)."""

    rep_dim: int = 64  # size D of the representation `rep` (B, D)
    cnn_depth: int = 32  # channels of the first conv layer (doubled per stride-2 stage)
    cnn_stages: int = 4  # stride-2 conv stages for images (64 px -> 4 px with 4 stages)
    enc_hidden: int = 256  # hidden width of the encoder head (and the vector-obs MLP)
    enc_layers: int = 1  # hidden layers of the encoder head
    enc_batch_norm: bool = True  # BatchNorm1d (no affine) on the rep, as LeWM's projector
    pred_hidden: int = 256  # hidden width of the predictor
    pred_layers: int = 3  # residual blocks of the predictor
    history: int = 1  # k: the predictor sees the last k reps (State key `rep_history` if k > 1)
    conditioning: str = "adaln"  # how the action enters the predictor: adaln | concat
    regularizer: str = "sigreg"  # anti-collapse: sigreg | vicreg | ema | none
    reg_weight: float = 0.1  # weight of the sigreg / vicreg term
    sigreg_projections: int = 256  # M random 1-D directions per SIGReg evaluation
    sigreg_knots: int = 17  # integration knots of the Epps-Pulley integral over t in [0, t_max]
    sigreg_t_max: float = 3.0  # upper limit of the Epps-Pulley integral (LeJEPA/LeWM: 3)
    ema_decay: float = 0.996  # EMA target encoder decay (regularizer == "ema")
    pred_steps: int = 4  # autoregressive open-loop prediction steps in the loss
    ar_weight: float = 1.0  # weight of the autoregressive term (teacher-forced term has weight 1)
    update_fusion: float = 0.0  # update(): rep = (1 - f) * encode(obs) + f * predicted rep
    lr: float = 3e-4  # Adam learning rate suggested to trainers
    grad_clip: float = 1.0  # gradient-norm clip suggested to trainers

    def __post_init__(self) -> None:
        for name in ("rep_dim", "cnn_depth", "cnn_stages", "enc_hidden", "pred_hidden"):
            _positive_int(name, getattr(self, name))
        for name in ("history", "pred_steps", "sigreg_projections", "sigreg_knots"):
            _positive_int(name, getattr(self, name))
        for name in ("enc_layers", "pred_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected an int >= 0, got {getattr(self, name)!r}")
        if self.sigreg_knots < 2:
            raise ConfigError(f"sigreg_knots: expected >= 2, got {self.sigreg_knots}")
        if self.conditioning not in CONDITIONING:
            raise ConfigError(
                f"conditioning: expected one of {CONDITIONING}, got {self.conditioning!r}"
            )
        if self.regularizer not in REGULARIZERS:
            raise ConfigError(
                f"regularizer: expected one of {REGULARIZERS}, got {self.regularizer!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: expected in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.update_fusion <= 1.0:
            raise ConfigError(f"update_fusion: expected in [0, 1], got {self.update_fusion}")
        for name in ("reg_weight", "ar_weight", "sigreg_t_max", "grad_clip"):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.sigreg_t_max <= 0:
            raise ConfigError(f"sigreg_t_max: expected > 0, got {self.sigreg_t_max}")
        if not _is_lr(self.lr):
            raise ConfigError(f"lr: expected a float in [0, 1], got {self.lr!r}")


def _is_lr(value: object) -> bool:
    """A learning rate in [0, 1]: 0 freezes the weights (allowed, e.g. to show that learning
    depends on them); NaN, inf and anything above 1 are typos."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: expected an int >= 1, got {value!r}")


PRESETS: dict[str, JEPAConfig] = {
    "debug": JEPAConfig(
        rep_dim=16,
        cnn_depth=4,
        enc_hidden=32,
        pred_hidden=32,
        pred_layers=1,
        sigreg_projections=32,
        pred_steps=2,
    ),
    "small": JEPAConfig(
        rep_dim=32,
        cnn_depth=16,
        enc_hidden=128,
        pred_hidden=128,
        pred_layers=2,
        sigreg_projections=128,
        pred_steps=4,
    ),
    "base": JEPAConfig(
        rep_dim=128,
        cnn_depth=32,
        enc_hidden=512,
        pred_hidden=512,
        pred_layers=4,
        history=3,
        sigreg_projections=512,
        pred_steps=8,
    ),
}
