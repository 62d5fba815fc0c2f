"""The claims ledger: headline claims of the catalog papers as small experiments."""

from heldout.claims.base import STEP_DECAY, Claim, Verdict, named, record, seed_vote
from heldout.claims.benign import XORBenignOverfitting, xor_config
from heldout.claims.boosting import GBNNTruncation, gbnn_configs
from heldout.claims.coherence import CoherenceRealVsRandom, coherence_config
from heldout.claims.grokking import (
    GrokkingNLMAlignment,
    PerpAdamWGeneralizes,
    SoftmaxCollapseMechanism,
    collapse_margins,
    grokking_config,
)
from heldout.claims.information import InformationCompression, information_config
from heldout.claims.large_batch import LargeBatchGapCloses, large_batch_configs
from heldout.claims.lazy_rich import LazyRichGrokking, lazy_rich_config, time_to_fraction
from heldout.claims.local_complexity import (
    LocalComplexityDoubleDescent,
    local_complexity_config,
)
from heldout.claims.memorization import (
    IPRPruningRemovesMemorization,
    corrupted_modular_config,
)
from heldout.claims.mup import MuPTransfer, mup_config
from heldout.claims.sharpness_correlation import SharpnessWeaklyCorrelated, sharpness_population
from heldout.claims.soups import GreedySoupBeatsBestIngredient, soup_configs
from heldout.claims.training_tricks import HardBatchesEffect, PSKDCalibration, mnist1d_mlp_config

__all__ = [
    "STEP_DECAY",
    "Claim",
    "CoherenceRealVsRandom",
    "GBNNTruncation",
    "GreedySoupBeatsBestIngredient",
    "GrokkingNLMAlignment",
    "HardBatchesEffect",
    "IPRPruningRemovesMemorization",
    "InformationCompression",
    "LargeBatchGapCloses",
    "LazyRichGrokking",
    "LocalComplexityDoubleDescent",
    "MuPTransfer",
    "PSKDCalibration",
    "PerpAdamWGeneralizes",
    "SharpnessWeaklyCorrelated",
    "SoftmaxCollapseMechanism",
    "Verdict",
    "XORBenignOverfitting",
    "coherence_config",
    "collapse_margins",
    "corrupted_modular_config",
    "gbnn_configs",
    "grokking_config",
    "information_config",
    "large_batch_configs",
    "lazy_rich_config",
    "local_complexity_config",
    "mnist1d_mlp_config",
    "mup_config",
    "named",
    "record",
    "seed_vote",
    "sharpness_population",
    "soup_configs",
    "time_to_fraction",
    "xor_config",
]
