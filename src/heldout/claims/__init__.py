"""The claims ledger: headline claims of the catalog papers as small experiments."""

from heldout.claims.base import Claim, Verdict, record, seed_vote
from heldout.claims.benign import XORBenignOverfitting, xor_config
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

__all__ = [
    "Claim",
    "GrokkingNLMAlignment",
    "IPRPruningRemovesMemorization",
    "LazyRichGrokking",
    "PerpAdamWGeneralizes",
    "SoftmaxCollapseMechanism",
    "Verdict",
    "XORBenignOverfitting",
    "collapse_margins",
    "corrupted_modular_config",
    "grokking_config",
    "lazy_rich_config",
    "record",
    "seed_vote",
    "time_to_fraction",
    "xor_config",
]
