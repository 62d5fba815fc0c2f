"""OGEN (#5): features of unknown classes synthesized from their names regularize the
classifier toward uncertain predictions outside the known classes, with adaptive
self-distillation from an EMA teacher."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.technique import Technique
from heldout.methods.prompts.prompted import PromptedClassifier, batched, check_text_classifier
from heldout.methods.prompts.promptsrc import class_prototypes
from heldout.registry import TECHNIQUES

__all__ = ["OGEN", "FeatureSynthesizer", "nearest_classes", "uniform_cross_entropy"]

OGEN_PAPER = ("Overcoming the Pitfalls of Vision-Language Model Finetuning for OOD "
              "Generalization (OGEN, Zang et al., arXiv:2401.15914)")
UNKNOWN_NAMES = ("weather", "music", "cooking", "travel", "medicine", "law")


def nearest_classes(queries: Tensor, keys: Tensor, k: int, exclude_self: bool = False) -> Tensor:
    """Indices ``(Q, k)`` of the ``k`` keys most cosine-similar to each query (most similar
    first); ``exclude_self`` (queries are the keys) skips each query's own row.

    Example:
        >>> keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> nearest_classes(keys, keys, 1, exclude_self=True).flatten().tolist()
        [2, 2, 0]
    """
    similarity = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T
    if exclude_self:
        similarity = similarity.masked_fill(
            torch.eye(len(keys), dtype=torch.bool, device=keys.device), -torch.inf)
    limit = len(keys) - int(exclude_self)
    if not 1 <= k <= limit:
        raise ValueError(f"nearest_classes: k must be in [1, {limit}], got {k}")
    return similarity.topk(k, dim=-1).indices


def uniform_cross_entropy(logits: Tensor) -> Tensor:
    """Cross-entropy of the predictions against the uniform distribution over the known
    classes, −(1/C) Σ_c log p_c, averaged over the rows (log C at its minimum, uniform p).

    Example:
        >>> round(float(uniform_cross_entropy(torch.zeros(2, 4))), 4)  # log 4
        1.3863
    """
    return -F.log_softmax(logits, -1).mean(-1).mean()


class FeatureSynthesizer(nn.Module):
    """f̂ = MLP([e, c]): a feature from a class-name embedding e and the mean feature c of its
    nearest known classes (by name), OGEN's class-conditional feature generator."""

    def __init__(self, width: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * width, hidden), nn.GELU(),
                                 nn.Linear(hidden, width))

    def forward(self, name_embedding: Tensor, context: Tensor) -> Tensor:
        return self.mlp(torch.cat([name_embedding, context], -1))


@TECHNIQUES.register(
    "ogen",
    summary="OGEN: synthesize features of unknown classes from their names (kNN known-class "
    "context), push the classifier to uncertainty on them; adaptive self-distillation.",
    papers=(5,),
    search_space={"unknown_weight": ("log_uniform", 0.01, 1.0),
                  "distill_weight": ("log_uniform", 0.1, 10.0)},
    references=(OGEN_PAPER,),
)
@dataclass
class OGEN(Technique):
    """OGEN on a frozen pre-trained text encoder (the head and the synthesizer train).

    Class-name embeddings are the frozen encoder's pooled features of the names
    (``class_names``, default "class i"; ``unknown_names``). At fit start the class
    prototypes (mean frozen training features) are computed. Each step adds:

    - ``synth_weight`` · MSE between the synthesized feature of each known class in the
      batch — from its name and the mean prototype of its ``k`` nearest *other* known classes
      (leave-one-out, as OGEN trains its generator on known classes) — and the class's mean
      feature in the batch;
    - ``unknown_weight`` · :func:`uniform_cross_entropy` of the head on the synthesized
      (detached) features of the unknown names (context: their ``k`` nearest known classes);
    - adaptive self-distillation: ``distill_weight`` · (step / max_steps) ·
      KL(teacher ‖ student) on the batch, the teacher an EMA (``teacher_momentum``) of the
      head.

    Stand-ins: OGEN extends CLIP's zero-shot head with the unknown classes' text features and
    trains the synthesized features as those classes; a linear head has no unknown outputs, so
    the synthesized unknowns are pushed toward uniform predictions (calibrated uncertainty
    outside the known classes). Its adaptive self-distillation takes the teacher from a window
    of past model states, weighted adaptively; here an EMA teacher whose weight grows
    linearly with training progress (overfitting grows late in training).

    References:
        Overcoming the Pitfalls of Vision-Language Model Finetuning for OOD Generalization
        (arXiv:2401.15914).
    """

    class_names: tuple[str, ...] = ()  # names of the known classes (else "class i")
    unknown_names: tuple[str, ...] = UNKNOWN_NAMES  # names of unknown classes to synthesize
    k: Annotated[int, Ge(1)] = 2  # nearest known classes that form a synthesis context
    hidden: Annotated[int, Ge(1)] = 128  # the synthesizer's hidden width
    synth_weight: Annotated[float, Ge(0)] = 1.0
    unknown_weight: Annotated[float, Ge(0)] = 0.1
    distill_weight: Annotated[float, Ge(0)] = 1.0
    teacher_momentum: Annotated[float, Interval(0.0, 1.0)] = 0.99
    _teacher: nn.Module | None = field(default=None, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)

    touches = frozenset({"model", "loss_term", "after_step"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        base = check_text_classifier(model, self.name)
        prompted = PromptedClassifier(base, base.head.weight.new_zeros(0, base.hidden_size))
        prompted.synthesizer = FeatureSynthesizer(base.hidden_size, self.hidden).to(
            base.head.weight.device)
        return prompted

    def _names(self, classes: int) -> Sequence[str]:
        names = self.class_names or tuple(f"class {i}" for i in range(classes))
        if len(names) != classes:
            raise ValueError(f"class_names has {len(names)} names for {classes} classes")
        if self.k > classes - 1:
            raise ValueError(f"k ({self.k}) must be below the number of classes ({classes})")
        return names

    def on_fit_start(self, state: Any) -> None:
        model: PromptedClassifier = state.model
        classes, device = model.head.out_features, model.head.weight.device
        if state.train_data is None:
            raise ValueError("ogen needs the training tensors for its class prototypes")
        x, y = state.train_data
        prototypes = class_prototypes(batched(model.frozen_features, x.to(device).long()),
                                      y.to(device).long(), classes)
        known = self._embed_names(model, self._names(classes))
        unknown = self._embed_names(model, self.unknown_names)
        for name, value in (("ogen_prototypes", prototypes), ("ogen_known", known),
                            ("ogen_unknown", unknown)):
            model.register_buffer(name, value, persistent=False)
        self._teacher = copy.deepcopy(model.head).requires_grad_(False)
        if self._pending:
            self._teacher.load_state_dict(self._pending)
            self._pending = None

    @staticmethod
    def _embed_names(model: PromptedClassifier, names: Sequence[str]) -> Tensor:
        from heldout.models.pretrained import tokenize

        ids = tokenize(list(names)).to(model.head.weight.device)
        vocab = model.base.encoder.get_input_embeddings().num_embeddings
        if int(ids.max()) >= vocab:
            raise ValueError(f"ogen embeds class names with MiniLM's tokenizer, but the "
                             f"model's vocabulary has {vocab} entries: use a text task "
                             "(e.g. text_topics)")
        return model.frozen_features(ids)

    def _context(self, model: nn.Module, names: Tensor, exclude_self: bool) -> Tensor:
        index = nearest_classes(names, model.get_buffer("ogen_known"), self.k, exclude_self)
        return model.get_buffer("ogen_prototypes")[index].mean(1)

    def loss_term(self, logits: Tensor, targets: Tensor, state: Any) -> Tensor:
        model: PromptedClassifier = state.model
        features = model.last_features
        if features is None or self._teacher is None:
            raise RuntimeError("ogen: the model has not run on this batch / fit not started")
        synthesizer: FeatureSynthesizer = model.synthesizer  # type: ignore[assignment]
        known = model.get_buffer("ogen_known")
        classes = targets.unique()
        batch_means = torch.stack([features.detach()[targets == c].mean(0) for c in classes])
        context = self._context(model, known, exclude_self=True)[classes]
        synth = F.mse_loss(synthesizer(known[classes], context), batch_means)
        unknown_names = model.get_buffer("ogen_unknown")
        unknown = synthesizer(unknown_names, self._context(model, unknown_names, False))
        uncertain = uniform_cross_entropy(model.head(unknown.detach()))
        teacher = self._teacher(features.detach())
        distill = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1),
                           reduction="batchmean", log_target=True)
        ramp = state.step / max(1, state.max_steps)
        return (self.synth_weight * synth + self.unknown_weight * uncertain
                + self.distill_weight * ramp * distill)

    @torch.no_grad()
    def on_after_step(self, state: Any) -> None:
        if self._teacher is None:
            return
        for t, s in zip(self._teacher.parameters(), state.model.head.parameters(), strict=True):
            t.lerp_(s, 1 - self.teacher_momentum)

    def state_dict(self) -> dict[str, Any]:
        if self._teacher is None:
            return dict(self._pending or {})
        return {k: v.clone() for k, v in self._teacher.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self._teacher is None:
            self._pending = dict(state)
        else:
            self._teacher.load_state_dict(state)
