"""HARD: knowledge distillation on inputs a learned augmenter moves to where the teacher and
the student disagree (#32).

Each training step alternates two moves:

1. **Augmenter ascent.** A small network g_φ(x, z) (here a bounded additive perturbation,
   x̃ = x + b·tanh(f_φ([x, z])), with noise z so that one input can be moved several ways)
   takes ``augmenter_steps`` Adam steps on

       L_g(φ) = −KL(p_t(x̃) ‖ p_s(x̃)) + λ·KL(p_t(x) ‖ p_t(x̃)),

   pushing x̃ to where the student's softened prediction departs from the teacher's (first
   term, maximized) while the teacher's own prediction of x̃ stays that of x (second term,
   the paper's constraint that an augmentation must keep what the teacher sees).
2. **Student distillation.** The student trains on :func:`~heldout.methods.distill.
   distillation_loss` against the teacher on the batch in which each example is replaced by
   its augmentation with probability ``augment_probability``.

The functions (:func:`teacher_student_kl`, :func:`hard_augmenter_loss`,
:func:`hard_augmenter_step`) and :class:`PerturbationAugmenter` work in a plain loop;
:class:`HardKD` (registered ``hard_kd``) plugs them into the Trainer as an augmentation that
also replaces the loss.

Deviations from the paper: the paper's augmenters are a spatial transformer and a pretrained
VAE for images; this module's is an additive perturbation net with a bounded output, which
applies to any continuous input (flattened digits, 1-D signals). The last layer starts at
zero, so before its first step the augmenter is the identity.

References:
    HARD: Hard Augmentations for Robust Distillation (Nix, Burg, Sinz; arXiv:2305.14890).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.augment import Augmentation
from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.checks import check_same_shape
from heldout.core.sampling import stream_generator
from heldout.methods.distill import KnowledgeDistillation
from heldout.registry import TECHNIQUES

__all__ = [
    "HardKD",
    "PerturbationAugmenter",
    "hard_augmenter_loss",
    "hard_augmenter_step",
    "teacher_student_kl",
]


def teacher_student_kl(teacher_logits: Tensor, student_logits: Tensor,
                       temperature: float = 1.0) -> Tensor:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)), the batch mean; differentiable in both logits.

    Example:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> float(teacher_student_kl(z, z))
        0.0
    """
    check_same_shape("teacher_student_kl", ("teacher_logits", teacher_logits),
                     ("student_logits", student_logits))
    if not temperature > 0:
        raise ValueError(f"teacher_student_kl: temperature must be > 0, got {temperature}")
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")


def hard_augmenter_loss(teacher_augmented: Tensor, student_augmented: Tensor,
                        teacher_clean: Tensor, temperature: float = 4.0,
                        teacher_weight: float = 1.0) -> Tensor:
    """L_g = −KL(p_t(x̃) ‖ p_s(x̃)) + λ·KL(p_t(x) ‖ p_t(x̃)) at temperature T (the augmenter
    minimizes it): the teacher–student disagreement on the augmented inputs, maximized,
    against the change of the teacher's own prediction, λ = ``teacher_weight`` >= 0.

    Example:
        >>> t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> bool(hard_augmenter_loss(t, s, t) < 0)  # disagreement, teacher unchanged
        True

    References:
        HARD: Hard Augmentations for Robust Distillation (arXiv:2305.14890).
    """
    if not teacher_weight >= 0:
        raise ValueError(f"hard_augmenter_loss: teacher_weight must be >= 0, got "
                         f"{teacher_weight}")
    check_same_shape("hard_augmenter_loss", ("teacher_augmented", teacher_augmented),
                     ("teacher_clean", teacher_clean))
    disagreement = teacher_student_kl(teacher_augmented, student_augmented, temperature)
    drift = teacher_student_kl(teacher_clean.detach(), teacher_augmented, temperature)
    return -disagreement + teacher_weight * drift


class PerturbationAugmenter(nn.Module):
    """x̃ = x + b·tanh(W₂ relu(W₁[flatten(x), z] + c₁) + c₂): a bounded additive perturbation
    predicted from the input and a noise vector z. Every coordinate of x̃ stays within b of
    x. W₂ and c₂ start at zero, so the augmenter starts as the identity; W₁ and c₁ are drawn
    uniform in ±1/sqrt(fan_in) (PyTorch's default range) from ``generator``, never from the
    global RNG.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augmenter = PerturbationAugmenter(4, hidden=8, noise_dim=2, bound=0.1, generator=g)
        >>> x = torch.rand(3, 4, generator=g)
        >>> bool(torch.equal(augmenter(x, torch.randn(3, 2, generator=g)), x))
        True
    """

    def __init__(self, features: int, hidden: int = 64, noise_dim: int = 8,
                 bound: float = 0.3, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, value in (("features", features), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"PerturbationAugmenter: {name} must be >= 1, got {value}")
        if noise_dim < 0 or not bound >= 0:
            raise ValueError(f"PerturbationAugmenter: need noise_dim >= 0 and bound >= 0, got "
                             f"noise_dim={noise_dim}, bound={bound}")
        self.features, self.noise_dim, self.bound = features, noise_dim, float(bound)
        limit = 1 / math.sqrt(features + noise_dim)

        def uniform(*shape: int) -> nn.Parameter:
            draw = torch.rand(shape, generator=generator, device=device)
            return nn.Parameter((draw * 2 - 1) * limit)

        self.hidden_weight = uniform(hidden, features + noise_dim)
        self.hidden_bias = uniform(hidden)
        self.out_weight = nn.Parameter(torch.zeros(features, hidden, device=device))
        self.out_bias = nn.Parameter(torch.zeros(features, device=device))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        if noise.shape != (len(x), self.noise_dim):
            raise ValueError(f"PerturbationAugmenter: noise must have shape "
                             f"{(len(x), self.noise_dim)}, got {tuple(noise.shape)}")
        inputs = torch.cat([x.flatten(1), noise], 1)
        hidden = torch.relu(F.linear(inputs, self.hidden_weight, self.hidden_bias))
        delta = torch.tanh(F.linear(hidden, self.out_weight, self.out_bias))
        return x + self.bound * delta.view_as(x)


def hard_augmenter_step(augmenter: nn.Module, optimizer: torch.optim.Optimizer,
                        teacher: nn.Module, student: nn.Module, x: Tensor, noise: Tensor,
                        temperature: float = 4.0, teacher_weight: float = 1.0) -> float:
    """One optimizer step of the augmenter on :func:`hard_augmenter_loss` (the teacher and
    the student fixed); returns the loss before the step.

    Only the augmenter's gradients are written (``torch.autograd.grad``): the student's and
    teacher's ``.grad`` stay untouched. The student runs in eval mode for this step (its mode
    is restored after), so BatchNorm running statistics are not updated by an extra forward.
    """
    params = [p for p in augmenter.parameters() if p.requires_grad]
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            teacher_clean = teacher(x)
        augmented = augmenter(x, noise)
        loss = hard_augmenter_loss(teacher(augmented), student(augmented), teacher_clean,
                                   temperature, teacher_weight)
        grads = torch.autograd.grad(loss, params)
    finally:
        student.train(was_training)
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


@TECHNIQUES.register(
    "hard_kd",
    summary="Knowledge distillation on inputs an adversarial augmenter moves to where teacher "
    "and student disagree (HARD).",
    papers=(32,),
    search_space={
        "bound": ("choice", [0.1, 0.3, 0.5]),
        "teacher_weight": ("choice", [0.3, 1.0, 3.0]),
        "augmenter_lr": ("log_uniform", 1e-4, 1e-2),
        "augment_probability": ("uniform", 0.25, 1.0),
    },
    references=("HARD: Hard Augmentations for Robust Distillation (arXiv:2305.14890)",
                "Distilling the Knowledge in a Neural Network (arXiv:1503.02531)"),
)
@dataclass
class HardKD(KnowledgeDistillation, Augmentation):
    """HARD on top of :class:`~heldout.methods.distill.KnowledgeDistillation` (the same
    teacher: ``teacher_run``, or ``set_teacher`` in a plain loop). Before each training step
    the augmenter (a :class:`PerturbationAugmenter`, built at the first batch from the
    step's generator) takes ``augmenter_steps`` Adam steps of :func:`hard_augmenter_step`;
    then each example of the batch is replaced by its augmentation with probability
    ``augment_probability`` and the student trains on the distillation loss of that batch.
    The noise z and the replacement mask come from the step's generator, and the augmenter
    and its Adam state are checkpointed, so a resumed run is bit-identical.

    With ``augmenter_steps=0`` (the augmenter stays the identity), ``bound=0`` or
    ``augment_probability=0`` it is plain knowledge distillation, exactly.

    Needs continuous inputs (a perturbation of token ids has no meaning).

    References:
        HARD: Hard Augmentations for Robust Distillation (arXiv:2305.14890).
    """

    bound: Annotated[float, Ge(0)] = 0.3  # b: max change of each input coordinate
    teacher_weight: Annotated[float, Ge(0)] = 1.0  # λ: weight of the teacher-drift penalty
    augmenter_lr: Annotated[float, Gt(0)] = 1e-3  # Adam learning rate of the augmenter
    augmenter_steps: Annotated[int, Ge(0)] = 1  # augmenter steps per training step
    augment_probability: Annotated[float, Interval(0, 1)] = 0.5  # share of examples replaced
    hidden: Annotated[int, Ge(1)] = 64  # hidden width of the augmenter
    noise_dim: Annotated[int, Ge(0)] = 8  # size of the noise z fed to the augmenter
    _student: nn.Module | None = field(default=None, init=False, repr=False)
    _seed: int = field(default=0, init=False, repr=False)
    _augmenter: PerturbationAugmenter | None = field(default=None, init=False, repr=False)
    _optimizer: torch.optim.Optimizer | None = field(default=None, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)

    touches: ClassVar[frozenset[str]] = frozenset({"augment", "loss"})

    def set_student(self, student: nn.Module, seed: int = 0) -> None:
        """The model being trained, and the seed of the augmenter's initialization (the
        Trainer sets both, from its model and run seed, at the start of fit)."""
        self._student, self._seed = student, seed

    def on_fit_start(self, state: Any) -> None:
        super().on_fit_start(state)
        self.set_student(state.model, state.seed)

    def _built(self, x: Tensor) -> tuple[PerturbationAugmenter, torch.optim.Optimizer]:
        """The augmenter and its optimizer, built at the first batch: initialized from the
        run seed's own stream (not the step's generator, so a resumed run, which loads the
        augmenter instead, draws the same step noise as an unbroken one)."""
        if self._augmenter is None:
            init = stream_generator(self._seed, "hard_kd/augmenter", device=x.device)
            self._augmenter = PerturbationAugmenter(x[0].numel(), self.hidden, self.noise_dim,
                                                    self.bound, init, x.device)
            self._optimizer = torch.optim.Adam(self._augmenter.parameters(),
                                               lr=self.augmenter_lr)
            if self._pending:  # a checkpoint loaded before the first batch
                self.load_state_dict(self._pending)
        assert self._optimizer is not None  # built with the augmenter
        return self._augmenter, self._optimizer

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not x.is_floating_point():
            raise ValueError(f"hard_kd needs continuous inputs (a floating tensor), got "
                             f"{x.dtype}: it perturbs the inputs")
        if self._teacher is None or self._student is None:
            raise ValueError("hard_kd needs a teacher (teacher_run or set_teacher) and the "
                             "student (set by the Trainer, or set_student in a plain loop)")
        augmenter, optimizer = self._built(x)
        noise = torch.randn(len(x), self.noise_dim, generator=generator, device=x.device)
        replace = torch.rand(len(x), generator=generator, device=x.device)
        for _ in range(self.augmenter_steps):
            hard_augmenter_step(augmenter, optimizer, self._teacher, self._student, x, noise,
                                self.temperature, self.teacher_weight)
        with torch.no_grad():
            augmented = augmenter(x, noise)
        mask = (replace < self.augment_probability).view(-1, *[1] * (x.dim() - 1))
        return torch.where(mask, augmented, x), y

    def state_dict(self) -> dict[str, Any]:
        if self._augmenter is None or self._optimizer is None:
            return dict(self._pending or {})
        return {"augmenter": self._augmenter.state_dict(),
                "optimizer": self._optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._augmenter is None or self._optimizer is None:
            self._pending = dict(state)  # loaded into the augmenter when it is built
            return
        self._augmenter.load_state_dict(state["augmenter"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._pending = None
