"""Techniques that change training: pure functions and wrappers, plus their Trainer adapters."""

from heldout.methods._wrapper import OptimizerWrapper
from heldout.methods.averaging import (
    EMA,
    SWA,
    ExponentialMovingAverage,
    GaussianAveraging,
    WeightAverage,
    ema_update,
    gaussian_average,
    recompute_batchnorm_stats,
)
from heldout.methods.boosting import (
    GBNN,
    BoostedUnits,
    BoostingStep,
    StackedUnits,
    fit_stage,
    keep_first_units,
    newton_step,
)
from heldout.methods.distill import (
    PSKD,
    KnowledgeDistillation,
    distillation_loss,
    pskd_alpha,
    pskd_targets,
    soft_cross_entropy,
)
from heldout.methods.gradients import PerpendicularGradient, PerpGrad, perpendicular_gradient
from heldout.methods.losses import (
    LabelSmoothing,
    StableMax,
    label_smoothing_cross_entropy,
    log_stablemax,
    stablemax,
    stablemax_cross_entropy,
)
from heldout.methods.mix_ln import MixLN, apply_mix_ln, mix_ln_norms
from heldout.methods.mup import MuP, mup_init_, mup_param_groups
from heldout.methods.normalization import GhostBatchNorm, GhostBN, ghost_batch_norm
from heldout.methods.pruning import MagnitudePruning, magnitude_prune_mask, sparse_model_soup
from heldout.methods.regularization import (
    EntropyRegularization,
    WeightDecay,
    entropy,
    entropy_regularization,
)
from heldout.methods.robust import (
    RobustMeanGradients,
    median_of_means,
    running_median,
    winsorized_mean,
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
from heldout.methods.sharpness_family import (
    ASAM,
    TRAM,
    UDIM,
    AdaptiveSharpnessAware,
    TrustRegionAware,
    UnknownDomainInconsistency,
)
from heldout.methods.soups import average_state_dicts, greedy_soup, uniform_soup

__all__ = [
    "KnowledgeDistillation",
    "distillation_loss",
    "ASAM",
    "TRAM",
    "UDIM",
    "AdaptiveSharpnessAware",
    "RobustMeanGradients",
    "TrustRegionAware",
    "UnknownDomainInconsistency",
    "median_of_means",
    "running_median",
    "winsorized_mean",
    "SWA",
    "GaussianAveraging",
    "MagnitudePruning",
    "average_state_dicts",
    "gaussian_average",
    "greedy_soup",
    "magnitude_prune_mask",
    "recompute_batchnorm_stats",
    "sparse_model_soup",
    "uniform_soup",
    "WeightAverage",
    "MixLN",
    "MuP",
    "apply_mix_ln",
    "mix_ln_norms",
    "mup_init_",
    "mup_param_groups",
    "GBNN",
    "BoostedUnits",
    "BoostingStep",
    "StackedUnits",
    "fit_stage",
    "keep_first_units",
    "newton_step",
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
