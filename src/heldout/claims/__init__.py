"""The claims ledger: headline claims of the catalog papers as small experiments."""

from heldout.claims.base import Claim, Verdict, record, seed_vote
from heldout.claims.benign import XORBenignOverfitting, xor_config
from heldout.claims.coherence import CoherenceRealVsRandom, coherence_config
from heldout.claims.grokking import (
    GrokkingNLMAlignment,
    PerpAdamWGeneralizes,
    SoftmaxCollapseMechanism,
    collapse_margins,
    grokking_config,
)
from heldout.claims.lazy_rich import LazyRichGrokking, lazy_rich_config, time_to_fraction
from heldout.claims.memorization import (
    IPRPruningRemovesMemorization,
    corrupted_modular_config,
)
from heldout.claims.sharpness import SharpnessWeaklyCorrelated, sharpness_population

__all__ = [
    "Claim",
    "CoherenceRealVsRandom",
    "GrokkingNLMAlignment",
    "IPRPruningRemovesMemorization",
    "LazyRichGrokking",
    "PerpAdamWGeneralizes",
    "SharpnessWeaklyCorrelated",
    "SoftmaxCollapseMechanism",
    "Verdict",
    "XORBenignOverfitting",
    "coherence_config",
    "collapse_margins",
    "corrupted_modular_config",
    "grokking_config",
    "lazy_rich_config",
    "record",
    "seed_vote",
    "sharpness_population",
    "time_to_fraction",
    "xor_config",
]
