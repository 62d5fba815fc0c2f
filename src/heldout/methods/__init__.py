"""Techniques that change training: pure functions and wrappers, plus their Trainer adapters."""

from heldout.methods._wrapper import OptimizerWrapper
from heldout.methods.averaging import EMA, ExponentialMovingAverage, ema_update
from heldout.methods.distill import PSKD, pskd_alpha, pskd_targets, soft_cross_entropy
from heldout.methods.gradients import PerpendicularGradient, PerpGrad, perpendicular_gradient
from heldout.methods.losses import (
    LabelSmoothing,
    StableMax,
    label_smoothing_cross_entropy,
    log_stablemax,
    stablemax,
    stablemax_cross_entropy,
)
from heldout.methods.normalization import GhostBatchNorm, GhostBN, ghost_batch_norm
from heldout.methods.regularization import (
    EntropyRegularization,
    WeightDecay,
    entropy,
    entropy_regularization,
)
from heldout.methods.schedules import (
    BatchLRScaling,
    LRSchedule,
    cosine_annealing,
    cosine_power_annealing,
    regime_steps,
    schedule_factor,
    sqrt_batch_scaling,
    step_decay,
)
from heldout.methods.selection import HardBatches, select_hard_batches
from heldout.methods.sharpness import SAM, SharpnessAware, preserve_batchnorm_stats

__all__ = [
    "PSKD",
    "EntropyRegularization",
    "HardBatches",
    "entropy",
    "entropy_regularization",
    "pskd_alpha",
    "pskd_targets",
    "select_hard_batches",
    "soft_cross_entropy",
    "BatchLRScaling",
    "LRSchedule",
    "cosine_annealing",
    "cosine_power_annealing",
    "regime_steps",
    "schedule_factor",
    "sqrt_batch_scaling",
    "step_decay",
    "EMA",
    "SAM",
    "ExponentialMovingAverage",
    "GhostBN",
    "GhostBatchNorm",
    "LabelSmoothing",
    "OptimizerWrapper",
    "PerpGrad",
    "PerpendicularGradient",
    "SharpnessAware",
    "StableMax",
    "WeightDecay",
    "ema_update",
    "ghost_batch_norm",
    "label_smoothing_cross_entropy",
    "log_stablemax",
    "perpendicular_gradient",
    "preserve_batchnorm_stats",
    "stablemax",
    "stablemax_cross_entropy",
]
