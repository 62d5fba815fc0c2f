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

__all__ = [
    "Claim",
    "GrokkingNLMAlignment",
    "PerpAdamWGeneralizes",
    "SoftmaxCollapseMechanism",
    "Verdict",
    "XORBenignOverfitting",
    "collapse_margins",
    "grokking_config",
    "record",
    "seed_vote",
    "xor_config",
]
