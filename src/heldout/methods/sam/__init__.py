"""The sharpness-aware family: SAM and the optimizer wrappers built on its machinery (the
scaled gradient norm, the move to w + e and back, BatchNorm statistics frozen after the first
pass), each with its Trainer adapter.

BatchNorm pitfall: every extra forward pass would move the running statistics again. Each
wrapper lets the first, unperturbed pass update them and runs its other passes with the
statistics frozen (pass ``preserve_batchnorm=False`` to turn that off).
"""

from heldout.methods.sam.asam import ASAM, AdaptiveSharpnessAware
from heldout.methods.sam.sam import (
    SAM,
    SharpnessAware,
    StackedAscent,
    is_weight_like,
    preserve_batchnorm_stats,
)
from heldout.methods.sam.tram import TRAM, TrustRegionAware, logit_divergence
from heldout.methods.sam.udim import (
    UDIM,
    UnknownDomainInconsistency,
    inconsistency_penalty,
    per_example_linear_gradients,
    udim_input_perturbation,
)

__all__ = [
    "ASAM",
    "SAM",
    "TRAM",
    "UDIM",
    "AdaptiveSharpnessAware",
    "SharpnessAware",
    "StackedAscent",
    "TrustRegionAware",
    "UnknownDomainInconsistency",
    "inconsistency_penalty",
    "is_weight_like",
    "logit_divergence",
    "per_example_linear_gradients",
    "preserve_batchnorm_stats",
    "udim_input_perturbation",
]
