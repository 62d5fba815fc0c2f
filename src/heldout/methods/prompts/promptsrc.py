"""PromptSRC (#70): self-regulating prompts — prompt tuning kept in agreement with the frozen
model (features and logits), a textually diverse frozen classifier, and Gaussian weighted
prompt aggregation over the trajectory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.methods.averaging.gaussian import GaussianAveraging
from heldout.methods.prompts.prompted import (
    PromptedClassifier,
    batched,
    check_text_classifier,
    initial_prompts,
)
from heldout.registry import TECHNIQUES

__all__ = ["PromptSRC", "class_prototypes", "prototype_logits", "self_consistency_loss"]

PROMPTSRC = ("Self-regulating Prompts: Foundational Model Adaptation without Forgetting "
             "(Khattak et al., arXiv:2307.06948)")
# Label-text templates of the frozen classifier's textual diversity (one per text style).
TEMPLATES = ("{}", "a report about {}", "a chat message about {}", "{} news",
             "a review about {}")


def self_consistency_loss(features: Tensor, frozen_features: Tensor, logits: Tensor,
                          frozen_logits: Tensor, feature_weight: float = 10.0,
                          logit_weight: float = 1.0) -> Tensor:
    """PromptSRC's self-consistency (mutual agreement) terms:
    λ_f · mean |f̂_p − f̂| + λ_l · KL(softmax(z_frozen) ‖ softmax(z_p)), with f̂ the
    L2-normalized pooled features of the prompted (p) and frozen models, the L1 mean over all
    entries and the KL averaged over the batch.

    Example:
        >>> f = torch.tensor([[3.0, 4.0]]); z = torch.zeros(1, 2)
        >>> float(self_consistency_loss(f, 2 * f, z, z))  # same direction, same logits
        0.0

    References:
        Khattak et al., arXiv:2307.06948, eqs. 1–3 (L_SCL-image/text as L1, L_SCL-logits as
        KL divergence).
    """
    if features.shape != frozen_features.shape or logits.shape != frozen_logits.shape:
        raise ValueError(f"self_consistency_loss: features {tuple(features.shape)} vs "
                         f"{tuple(frozen_features.shape)}, logits {tuple(logits.shape)} vs "
                         f"{tuple(frozen_logits.shape)} must match")
    l1 = (F.normalize(features, dim=-1) - F.normalize(frozen_features, dim=-1)).abs().mean()
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(frozen_logits, -1),
                  reduction="batchmean", log_target=True)
    return feature_weight * l1 + logit_weight * kl


def prototype_logits(features: Tensor, prototypes: Tensor, scale: float) -> Tensor:
    """Zero-shot logits scale · cos(f, p_c): a frozen classifier from class prototypes, as
    CLIP's logits are its scaled cosine between image and class-text features.

    Example:
        >>> prototype_logits(torch.tensor([[1.0, 0.0]]), torch.eye(2), 10.0)
        tensor([[10.,  0.]])
    """
    return scale * F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T


def class_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The mean feature of each class ``(C, H)``; a class without examples raises.

    Example:
        >>> class_prototypes(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 1]), 2)
        tensor([[2.],
                [5.]])
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"class_prototypes: classes {empty} have no examples")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype,
                       device=features.device).index_add_(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


def text_prototypes(model: PromptedClassifier, class_names: Sequence[str],
                    templates: Sequence[str]) -> Tensor:
    """Frozen features of each class name in every template, averaged over the templates
    (PromptSRC's textual diversity: an ensemble of label texts for the frozen classifier)."""
    from heldout.models.pretrained import tokenize

    device = model.prompt.device
    rows = [model.frozen_features(tokenize([t.format(name) for t in templates]).to(device))
            .mean(0) for name in class_names]
    return torch.stack(rows)


@TECHNIQUES.register(
    "promptsrc",
    summary="PromptSRC: prompt tuning regularized toward the frozen model (L1 on features, KL "
    "on logits of a template-ensemble zero-shot head) with Gaussian prompt aggregation.",
    papers=(70,),
    search_space={"feature_weight": ("log_uniform", 0.1, 30.0),
                  "logit_weight": ("log_uniform", 0.1, 10.0)},
    references=(PROMPTSRC,),
)
@dataclass
class PromptSRC(GaussianAveraging):
    """Self-regulating prompts on a pre-trained text classifier (``minilm``/``tiny_bert``).

    The model becomes a :class:`PromptedClassifier` (frozen encoder, ``num_prompts`` learnable
    prompts, trainable head). Added to the loss, each step (:func:`self_consistency_loss`):
    ``feature_weight`` · L1 between the prompted and frozen pooled features (normalized) plus
    ``logit_weight`` · KL from the frozen model's logits to the prompted ones. The weights are
    averaged with Gaussian weights over the epochs (the ``gaussian_averaging`` technique this
    class extends: once per epoch by default, μ = 0.75, σ = 0.05 of the points), and
    evaluation uses the average.

    What the "frozen logits" are here: CLIP's frozen logits come from its frozen text encoder
    over hand-written class prompts; a text classifier has no frozen head, so the frozen
    logits are :func:`prototype_logits` (scale · cosine) of the frozen features against class
    prototypes: the frozen features of the ``class_names`` in each of ``templates``, averaged
    (the stand-in for PromptSRC's textual diversity, its ensemble of label-text templates), or
    without ``class_names`` the class means of the frozen training features (computed once at
    fit start). The text-side L1 of the paper (prompted vs frozen class-text features) has no
    counterpart: the head is learned from scratch.

    With ``feature_weight = logit_weight = 0`` and ``evaluate_average = False`` training is
    exactly ``prompt_tuning``'s.

    References:
        Self-regulating Prompts: Foundational Model Adaptation without Forgetting
        (arXiv:2307.06948).
    """

    num_prompts: Annotated[int, Ge(0)] = 8  # soft prompt vectors
    init_words: tuple[str, ...] = ()  # initialize from these words' embeddings (else random)
    feature_weight: Annotated[float, Ge(0)] = 10.0  # λ of the L1 feature agreement
    logit_weight: Annotated[float, Ge(0)] = 1.0  # λ of the KL logit agreement
    logit_scale: Annotated[float, Gt(0)] = 20.0  # scale of the frozen cosine logits
    class_names: tuple[str, ...] = ()  # label texts of the classes (else class means)
    templates: tuple[str, ...] = TEMPLATES  # label-text templates ("{}" = the class name)
    every: Annotated[int | None, Ge(1)] = None  # aggregate once per epoch (PromptSRC)
    _prototypes: Tensor | None = field(default=None, init=False, repr=False)

    touches = GaussianAveraging.touches | {"model", "loss_term"}

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [t for t in self.templates if "{}" not in t]
        if not self.templates or bad:
            raise ValueError(f"templates must be non-empty, each with a '{{}}' slot; got "
                             f"{self.templates!r}")

    def transform_model(self, model: nn.Module) -> nn.Module:
        base = check_text_classifier(model, self.name)
        return PromptedClassifier(base, initial_prompts(base, self.num_prompts,
                                                        self.init_words))

    def on_fit_start(self, state: Any) -> None:
        super().on_fit_start(state)
        model: PromptedClassifier = state.model
        classes = model.head.out_features
        if self.class_names:
            if len(self.class_names) != classes:
                raise ValueError(f"class_names has {len(self.class_names)} names for "
                                 f"{classes} classes")
            self._prototypes = text_prototypes(model, self.class_names, self.templates)
        elif self.logit_weight > 0:
            if state.train_data is None:
                raise ValueError("promptsrc without class_names needs the training tensors "
                                 "for its class-mean frozen classifier")
            x, y = state.train_data
            device = model.prompt.device
            feats = batched(model.frozen_features, x.to(device))
            self._prototypes = class_prototypes(feats, y.to(device).long(), classes)

    def frozen_logits(self, model: PromptedClassifier, input_ids: Tensor) -> Tensor:
        """The frozen model's logits of a batch (zero-shot prototype head)."""
        if self._prototypes is None:
            raise RuntimeError("promptsrc: the frozen classifier is built at fit start")
        return prototype_logits(model.frozen_features(input_ids), self._prototypes,
                                self.logit_scale)

    def loss_term(self, logits: Tensor, targets: Tensor, state: Any) -> Tensor:
        model: PromptedClassifier = state.model
        if self.feature_weight == 0 and self.logit_weight == 0:
            return logits.new_zeros(())
        x = state.batch[0].long()
        features = model.last_features
        if features is None:
            raise RuntimeError("promptsrc: the prompted model has not run on this batch")
        frozen = model.frozen_features(x)
        frozen_logits = (self.frozen_logits(model, x) if self.logit_weight > 0
                         else logits.detach())
        return self_consistency_loss(features, frozen, logits, frozen_logits,
                                     self.feature_weight, self.logit_weight)
