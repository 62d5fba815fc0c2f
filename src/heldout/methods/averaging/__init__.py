"""Weight averaging: one holder (:class:`WeightAverage`: the averaged copy of the model, its
update count and its state) with three rules, each with its Trainer technique:

* EMA, θ̄ ← d·θ̄ + (1 − d)·θ after each step (``ema``; :mod:`.ema`);
* SWA, the equal-weight mean of the points from a start step, every k steps (``swa``;
  :mod:`.swa`);
* Gaussian trajectory averaging, PromptSRC's Gaussian-weighted mean over the trajectory
  (``gaussian_averaging``; :mod:`.gaussian`).

Averaged weights do not come with their own BatchNorm statistics: :mod:`.batchnorm`
recomputes them.
"""

from heldout.methods.averaging.average import (
    AveragingRule,
    AveragingTechnique,
    WeightAverage,
    average_into,
)
from heldout.methods.averaging.batchnorm import has_batchnorm, recompute_batchnorm_stats
from heldout.methods.averaging.ema import EMA, ExponentialMovingAverage, ema_rule, ema_update
from heldout.methods.averaging.gaussian import (
    GaussianAveraging,
    GaussianRule,
    GaussianTrajectoryAverage,
    gaussian_average,
    gaussian_weights,
)
from heldout.methods.averaging.swa import SWA, StochasticWeightAverage, swa_rule, swa_update

__all__ = [
    "EMA",
    "SWA",
    "AveragingRule",
    "AveragingTechnique",
    "ExponentialMovingAverage",
    "GaussianAveraging",
    "GaussianRule",
    "GaussianTrajectoryAverage",
    "StochasticWeightAverage",
    "WeightAverage",
    "average_into",
    "ema_rule",
    "ema_update",
    "gaussian_average",
    "gaussian_weights",
    "has_batchnorm",
    "recompute_batchnorm_stats",
    "swa_rule",
    "swa_update",
]
