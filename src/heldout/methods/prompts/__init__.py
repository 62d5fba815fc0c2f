"""Prompt methods on a frozen pre-trained text encoder: soft prompt tuning, PromptSRC (#70),
GRAM (#40), Soft Prompt Generation (#71) and OGEN (#5)."""

from heldout.methods.prompts.generation import PromptGenerator, SoftPromptGeneration
from heldout.methods.prompts.gram import GRAM, gram_meta_step, regulated_gradient
from heldout.methods.prompts.ogen import (
    OGEN,
    FeatureSynthesizer,
    nearest_classes,
    uniform_cross_entropy,
)
from heldout.methods.prompts.prompted import (
    PromptedClassifier,
    PromptTuning,
    check_text_classifier,
    initial_prompts,
    prepend_prompts,
)
from heldout.methods.prompts.promptsrc import (
    PromptSRC,
    class_prototypes,
    prototype_logits,
    self_consistency_loss,
)

__all__ = [
    "GRAM",
    "OGEN",
    "FeatureSynthesizer",
    "PromptGenerator",
    "PromptSRC",
    "PromptTuning",
    "PromptedClassifier",
    "SoftPromptGeneration",
    "check_text_classifier",
    "class_prototypes",
    "gram_meta_step",
    "initial_prompts",
    "nearest_classes",
    "prepend_prompts",
    "prototype_logits",
    "regulated_gradient",
    "self_consistency_loss",
    "uniform_cross_entropy",
]
