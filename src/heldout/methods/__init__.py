"""Techniques that change training: pure functions and wrappers, plus their Trainer adapters."""

from heldout.methods._wrapper import OptimizerWrapper
from heldout.methods.averaging import EMA, ExponentialMovingAverage, ema_update
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
from heldout.methods.regularization import WeightDecay
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
from heldout.methods.sharpness import SAM, SharpnessAware, preserve_batchnorm_stats

__all__ = [
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
