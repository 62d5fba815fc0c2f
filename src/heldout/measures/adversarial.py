"""Adversarial accuracy under an L∞ PGD attack (Madry et al.), for any differentiable model.

Projected gradient descent on the negative loss: from ``x⁰ = x + U(−ε, ε)`` (random start,
drawn from a given generator) or ``x⁰ = x``, repeat ``steps`` times

    xᵗ⁺¹ = Π( xᵗ + α · sign(∇ₓ CE(f(xᵗ), y)) ),

where Π clips to the ε-ball ``[x − ε, x + ε]`` and then to the data range ``[lo, hi]`` (the
intersection of the two boxes, so the attack never leaves either). The adversarial accuracy
is the accuracy of ``f`` on the final ``x^T``. The gradient is taken with respect to the
input only (the model's parameter gradients are left untouched), in eval mode, so it runs
through any preprocessing the model contains (e.g. :class:`~heldout.methods.raw_pipeline.
RawPipeline`) end to end.

It is the robustness half of catalog #30 as well: "Deep Networks Always Grok" tracks the
adversarial robustness of a network over training (PGD attacks) and finds it appears long
after the training accuracy ("delayed robustness"); logged at every evaluation, this measure
gives that curve.

References:
    Madry, Makelov, Schmidt, Tsipras, Vladu. Towards Deep Learning Models Resistant to
    Adversarial Attacks. arXiv:1706.06083.
    Zhang, Dong, Heide. All You Need is RAW. arXiv:2112.09219 (evaluated under PGD).
    Humayun, Balestriero, Baraniuk. Deep Networks Always Grok and Here is Why.
    arXiv:2402.15555.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.measure import EvalContext, Measure, check_splits, eval_mode
from heldout.registry import MEASURES

__all__ = ["PGDAccuracy", "pgd_accuracy", "pgd_attack"]


def _check_attack(eps: float, step_size: float | None, steps: int,
                  clip: tuple[float, float] | None) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if step_size is not None and step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {clip}")


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    clip: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """L∞ PGD adversarial examples for ``(x, y)`` (module docstring). ``step_size`` defaults to
    ``2.5 ε / steps`` (the rule of Madry et al.'s robustness code base); ``clip=None`` leaves
    the data range open. The model runs in eval mode; its mode is restored after.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> x, y = torch.rand(8, 2), torch.randint(0, 2, (8,))
        >>> adv = pgd_attack(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6), bool(adv.min() >= 0)
        (True, True)
    """
    _check_attack(eps, step_size, steps, clip)
    if not x.is_floating_point():
        raise ValueError(f"pgd_attack: needs float inputs, got {x.dtype}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    low, high = x - eps, x + eps
    if clip is not None:
        low, high = low.clamp(*clip), high.clamp(*clip)
    adv = x.clone()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype,
                           device=generator.device if generator is not None else x.device)
        adv = torch.minimum(torch.maximum(x + eps * (2 * noise.to(x.device) - 1), low), high)
    if eps == 0:
        return adv
    with eval_mode(model):
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.minimum(torch.maximum(adv.detach() + alpha * grad.sign(), low), high)
    return adv.detach()


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024,
                 **attack: object) -> float:
    """Accuracy of ``model`` on :func:`pgd_attack` examples of ``(x, y)`` (keyword arguments
    as there), attacked in chunks of ``batch_size``; ``eps=0`` gives the clean accuracy."""
    correct = 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        adv = pgd_attack(model, xb, yb, **attack)  # type: ignore[arg-type]
        with eval_mode(model), torch.no_grad():
            correct += int((model(adv).argmax(dim=-1) == yb).sum())
    return correct / len(y)


@MEASURES.register(
    "pgd_accuracy",
    summary="Accuracy under an L-infinity PGD attack (eps-ball, random start, data-range "
    "clipping).",
    papers=(76, 30),
)
@dataclass
class PGDAccuracy(Measure):
    """``pgd_accuracy`` on each listed split with float inputs and class targets
    (:func:`pgd_accuracy`); splits with token inputs give nothing. At most ``max_points``
    examples per split (a fixed random subset from ``seed``); the random start is drawn from
    ``seed`` too, so an evaluation is repeatable.

    References:
        Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks.
        arXiv:1706.06083.
    """

    targets = "classes"

    eps: Annotated[float, Ge(0)] = 0.1  # L∞ radius, in input units (digits' pixels: [0, 1])
    step_size: Annotated[float | None, Gt(0)] = None  # α; None: 2.5·eps / steps
    steps: Annotated[int, Ge(1)] = 10  # PGD iterations
    random_start: bool = True  # start from a uniform point of the eps-ball
    clip_min: float | None = 0.0  # lower end of the data range; None with clip_max: no clip
    clip_max: float | None = 1.0  # upper end of the data range
    max_points: Annotated[int, Ge(1)] = 1024  # examples attacked per split
    splits: tuple[str, ...] = ("test",)  # where to compute it
    seed: int = 0  # seeds the subset and the random start

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        check_splits(self.splits)
        if (self.clip_min is None) != (self.clip_max is None):
            raise ValueError("clip_min and clip_max must both be set or both be None, got "
                             f"{self.clip_min}, {self.clip_max}")
        _check_attack(self.eps, self.step_size, self.steps, self._clip())

    def _clip(self) -> tuple[float, float] | None:
        if self.clip_min is None or self.clip_max is None:
            return None
        return (self.clip_min, self.clip_max)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        if not x.is_floating_point():
            return {}
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        if len(y) > self.max_points:
            keep = torch.randperm(len(y), generator=generator, device=x.device)
            x, y = x[keep[: self.max_points]], y[keep[: self.max_points]]
        value = pgd_accuracy(ctx.model, x, y, batch_size=ctx.batch_size, eps=self.eps,
                             step_size=self.step_size, steps=self.steps,
                             random_start=self.random_start, clip=self._clip(),
                             generator=generator)
        return {"pgd_accuracy": value}
