"""Distillation: knowledge distillation from a teacher run (the base of the distillation
papers) and progressive self-knowledge distillation (PS-KD, #2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Gt, Interval
from heldout.core.checks import (
    check_class_targets,
    check_probabilities,
    check_same_shape,
    check_unit_interval,
)
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = [
    "PSKD",
    "KnowledgeDistillation",
    "distillation_loss",
    "pskd_alpha",
    "pskd_targets",
    "soft_cross_entropy",
]


def pskd_alpha(epoch: int, total_epochs: int, alpha_final: float = 0.8) -> float:
    """α_t = α_T · (t + 1) / T for the 0-based epoch t of T (linear growth to α_T).

    ``total_epochs`` T >= 1 and 0 <= ``epoch`` < T are integers and α_T is in [0, 1], so α_t
    stays in (0, α_T]; anything else raises (an epoch past the end would give α_t > α_T).

    Example:
        >>> pskd_alpha(0, 4), pskd_alpha(3, 4)
        (0.2, 0.8)

    References:
        Self-Knowledge Distillation with Progressive Refinement of Targets
        (arXiv:2006.12000), eq. 6.
    """
    for name, value in (("epoch", epoch), ("total_epochs", total_epochs)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"pskd_alpha: {name} must be an integer, got "
                            f"{type(value).__name__} {value!r}")
    if total_epochs < 1 or not 0 <= epoch < total_epochs:
        raise ValueError(f"pskd_alpha: need 0 <= epoch < total_epochs (0-based epochs), got "
                         f"epoch={epoch}, total_epochs={total_epochs}")
    alpha_final = check_unit_interval("pskd_alpha", "alpha_final", alpha_final)
    return alpha_final * (epoch + 1) / total_epochs


def pskd_targets(targets: Tensor, past: Tensor, alpha: float) -> Tensor:
    """ỹ = (1 − α)·one_hot(y) + α·P: the label mixed with the model's own past prediction.

    ``past`` (N, C) holds distributions (rows in [0, 1] summing to 1), ``targets`` N class
    indices in [0, C) and α is in [0, 1], so every row of ỹ is a distribution; anything else
    raises.

    Example:
        >>> pskd_targets(torch.tensor([0]), torch.tensor([[0.5, 0.5]]), 0.5)
        tensor([[0.7500, 0.2500]])
    """
    alpha = check_unit_interval("pskd_targets", "alpha", alpha)
    check_class_targets("pskd_targets", past, targets, "past")
    check_probabilities("pskd_targets", past, "past")
    one_hot = F.one_hot(targets.long(), past.shape[-1]).to(past.dtype)
    return (1 - alpha) * one_hot + alpha * past


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Batch mean of −Σ_c ỹ_c log softmax(z)_c (``soft_targets`` of the shape of ``logits``)."""
    check_same_shape("soft_cross_entropy", ("logits", logits), ("soft_targets", soft_targets))
    return -(soft_targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


@TECHNIQUES.register(
    "pskd",
    summary="Progressive self-knowledge distillation: targets mix the label with the model's "
    "own last prediction.",
    papers=(2,),
    search_space={"alpha_final": ("uniform", 0.3, 0.9)},
)
@dataclass
class PSKD(Technique):
    """PS-KD: train on ỹ = (1 − α_t)·one_hot(y) + α_t·P[i], where P[i] is the softmax the
    model gave example i at its previous visit (the training-mode forward, detached) and
    α_t = α_T (t + 1)/T grows linearly over the T epochs. An example not yet visited uses its
    one-hot label, so the first epoch is plain cross-entropy. P (N × C float32) and the
    visited mask (N bools) are checkpointed: C·4 + 1 bytes per example. The data must come
    with example indices (heldout's tensor batches do).

    References:
        Self-Knowledge Distillation with Progressive Refinement of Targets
        (arXiv:2006.12000), Algorithm 1.
    """

    # α_T (the paper's value for CIFAR-100 and ImageNet)
    alpha_final: Annotated[float, Interval(0, 1)] = 0.8
    _predictions: Tensor | None = field(default=None, init=False, repr=False)
    _visited: Tensor | None = field(default=None, init=False, repr=False)
    _pending: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    touches = frozenset({"loss", "after_step"})

    def _store(self, state: Any, classes: int, device: Any) -> tuple[Tensor, Tensor]:
        if self._predictions is None:
            if state.train_size is None:
                raise ValueError("pskd needs the training-set size (a sized dataset)")
            self._predictions = torch.zeros(state.train_size, classes, device=device)
            self._visited = torch.zeros(state.train_size, dtype=torch.bool, device=device)
        assert self._visited is not None  # created together with _predictions
        return self._predictions, self._visited

    def loss(self, logits: Tensor, targets: Tensor, state: Any) -> Tensor:
        index = state.batch[2]
        if index is None:
            raise ValueError("pskd needs example indices: let the DataLoader yield "
                             "(x, y, index) or train on tensors")
        predictions, visited = self._store(state, logits.shape[-1], logits.device)
        one_hot = F.one_hot(targets.long(), logits.shape[-1]).float()
        past = torch.where(visited[index, None], predictions[index], one_hot)
        total_epochs = -(-state.max_steps // max(state.steps_per_epoch or 1, 1))
        alpha = pskd_alpha(state.epoch, total_epochs, self.alpha_final)
        if self._pending is None:  # SAM calls the closure twice: keep the first forward
            self._pending = (index, torch.softmax(logits.detach().float(), dim=-1))
        return soft_cross_entropy(logits, pskd_targets(targets, past, alpha))

    def on_after_step(self, state: Any) -> None:
        if self._pending is not None and self._predictions is not None:
            index, probs = self._pending
            assert self._visited is not None  # created together with _predictions
            self._predictions[index] = probs
            self._visited[index] = True
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        if self._predictions is None:
            return {}
        return {"predictions": self._predictions, "visited": self._visited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._predictions = state.get("predictions")
        self._visited = state.get("visited")


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                      temperature: float = 4.0, alpha: float = 0.9) -> Tensor:
    """α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE(z_s, y), batch means.

    The T² factor keeps the soft term's gradient scale independent of T.

    Example:
        >>> z = torch.tensor([[1.0, 0.0]])
        >>> float(distillation_loss(z, z, torch.tensor([0]), alpha=1.0))  # same logits: 0
        0.0

    References:
        Distilling the Knowledge in a Neural Network (arXiv:1503.02531).
    """
    check_same_shape("distillation_loss", ("student_logits", student_logits),
                     ("teacher_logits", teacher_logits))
    check_class_targets("distillation_loss", student_logits, targets, "student_logits")
    soft_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    soft_student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(soft_student, soft_teacher, log_target=True, reduction="batchmean")
    hard = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * kl + (1 - alpha) * hard


@TECHNIQUES.register(
    "knowledge_distillation",
    summary="Distil a teacher run's predictions into the student (temperature-softened KL plus "
    "cross-entropy).",
    search_space={"temperature": ("choice", [2.0, 4.0, 8.0]), "alpha": ("uniform", 0.5, 0.95)},
    references=("Distilling the Knowledge in a Neural Network (arXiv:1503.02531)",),
)
@dataclass
class KnowledgeDistillation(Technique):
    """Train on :func:`distillation_loss` against a finished teacher run of the store (its
    last checkpoint, evaluated in eval mode with the weights evaluation used, e.g. EMA). The
    teacher must take the same inputs (the same task)."""

    teacher_run: str = ""  # id (or unique prefix, or name) of the teacher run in the store
    temperature: Annotated[float, Gt(0)] = 4.0  # T (Hinton et al. use 1-20; 4 is a common choice)
    alpha: Annotated[float, Interval(0, 1)] = 0.9  # weight of the soft term
    home: str | None = None  # the store's directory (None: $HELDOUT_HOME or ./.heldout)
    _teacher: nn.Module | None = field(default=None, init=False, repr=False)

    touches = frozenset({"loss"})

    def set_teacher(self, teacher: nn.Module) -> None:
        """Distil from ``teacher`` (any module taking the student's inputs): the plain-loop
        route; it is used in eval mode and never trained."""
        self._teacher = teacher.eval().requires_grad_(False)

    def resolve_runs(self, load_model: Callable[[str, str | None], nn.Module]) -> None:
        if self._teacher is None and self.teacher_run:
            self.set_teacher(load_model(self.teacher_run, self.home))

    def on_fit_start(self, state: Any) -> None:
        if self._teacher is None:
            raise ValueError("knowledge_distillation needs teacher_run (the id of a finished "
                             "run, resolved when heldout builds the run) or set_teacher(model)")

    def loss(self, logits: Tensor, targets: Tensor, state: Any) -> Tensor:
        if self._teacher is None:
            self.on_fit_start(state)
        assert self._teacher is not None
        with torch.no_grad():
            teacher_logits = self._teacher(state.batch[0])
        return distillation_loss(logits, teacher_logits, targets, self.temperature, self.alpha)
