"""TRAM: SAM whose radius is set from function space, ρ_t = logit_scale · D(target ‖ current),
the divergence between the softmax of a "parameter target" (initial weights, previous iterate or
an EMA) and of the current model on the batch; then e = ρ_t g/‖g‖."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Interval
from heldout.core.checks import check_non_negative, check_unit_interval
from heldout.core.functional import functional_call
from heldout.core.measure import eval_mode
from heldout.core.technique import Technique
from heldout.methods.sam.sam import SAM, preserve_batchnorm_stats
from heldout.registry import TECHNIQUES

__all__ = ["TRAM", "TrustRegionAware", "logit_divergence"]

Divergence = Literal["forward", "reverse", "symmetric"]
InputNormalization = Literal["batch", "example"]


def _trainable(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def logit_divergence(target_logits: Tensor, logits: Tensor, kind: Divergence = "forward") -> Tensor:
    """Divergence between the softmax distributions of two sets of logits, in float32.

    With P = softmax(target_logits) and Q = softmax(logits) row by row (the last dimension
    holds the classes; other dimensions are rows): ``"forward"`` is KL(P ‖ Q) (target to
    current), ``"reverse"`` KL(Q ‖ P), ``"symmetric"`` their sum. Each KL is summed over
    classes and averaged over rows.

    Example:
        >>> p = torch.tensor([[0.0, 0.0]]); q = torch.tensor([[0.0, 0.0]])
        >>> logit_divergence(p, q)
        tensor(0.)

    References:
        TRAM: Bridging Trust Regions and Sharpness Aware Minimization (arXiv:2310.03646).
        The official ``kl.py`` averages over batch × classes and divides by the batch size
        once more; here the KL is per row (per example), so ``logit_scale`` is per-example.
    """
    if kind not in get_args(Divergence):
        raise ValueError(f"unknown divergence {kind!r}; valid: {', '.join(get_args(Divergence))}")
    classes = logits.shape[-1]
    log_p = F.log_softmax(target_logits.reshape(-1, classes).float(), dim=-1)
    log_q = F.log_softmax(logits.reshape(-1, classes).float(), dim=-1)

    def kl(log_a: Tensor, log_b: Tensor) -> Tensor:  # KL(A ‖ B)
        return F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")

    if kind == "forward":
        return kl(log_p, log_q)
    if kind == "reverse":
        return kl(log_q, log_p)
    return kl(log_p, log_q) + kl(log_q, log_p)


class TRAM(SAM):
    """Trust Region Aware Minimization around any base optimizer.

    One step: (1) the closure's forward-backward gives g and the logits z at w; (2) the
    target weights give z̃ on the same inputs (no gradient, eval mode, as the official
    ``ParameterHistoryTarget``); (3) ρ_t = ``logit_scale`` · D(softmax z̃ ‖ softmax z)
    (:func:`logit_divergence`); (4) the target absorbs the weights w of this step:
    target ← decay · target + (1 − decay) · w; (5) e = ρ_t g/‖g‖ (ρ_t T²g/‖Tg‖ with
    ``adaptive``), a second forward-backward at w + e, back to w, base step.

    ``target_decay`` picks the target: 1 keeps the weights the wrapper was built with (the
    initial or pre-trained model, TRAM-θ₀); 0 gives the previous iterate (TRAM-θ_{t−1}: at
    step t the target holds w_{t−1}); in (0, 1) an EMA of past iterates. Buffers (BatchNorm
    statistics) are averaged too; integer buffers are copied.

    No change to the closure is needed: a forward hook on ``model`` records the inputs and
    output of the closure's forward pass (its last call of ``model``). The output must be
    the logits. ``last_radius`` holds ρ_t of the last step.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> opt = TRAM(torch.optim.SGD(model.parameters(), lr=0.1), model, logit_scale=1.0)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> def closure():
        ...     opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        TRAM: Bridging Trust Regions and Sharpness Aware Minimization (arXiv:2310.03646);
        official code tomsherborne/tram_optimizer (its ``first_step`` never multiplies e by
        the gradient; here e = ρ_t g/‖g‖ as in the paper).
    """

    model: nn.Module  # always given here (SAM's is optional)

    def __init__(
        self,
        base: torch.optim.Optimizer,
        model: nn.Module,
        logit_scale: float = 1.0,
        divergence: Divergence = "forward",
        target_decay: float = 0.0,
        adaptive: bool = False,
        preserve_batchnorm: bool = True,
    ) -> None:
        logit_scale = check_non_negative("TRAM", "logit_scale", logit_scale)
        target_decay = check_unit_interval("TRAM", "target_decay", target_decay)
        if divergence not in get_args(Divergence):
            raise ValueError(f"unknown divergence {divergence!r}; valid: "
                             f"{', '.join(get_args(Divergence))}")
        super().__init__(base, rho=0.0, adaptive=adaptive, eta=0.0,
                         model=model if preserve_batchnorm else None)
        self.model = model
        self.logit_scale = logit_scale
        self.divergence = divergence
        self.target_decay = target_decay
        self.target = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.last_radius: Tensor | None = None

    @torch.no_grad()
    def target_logits(self, *args: Any, **kwargs: Any) -> Tensor:
        """The target weights' output on the given model inputs (eval mode, no gradient)."""
        with eval_mode(self.model):
            return functional_call(self.model, self.target, args, kwargs)

    @torch.no_grad()
    def update_target(self) -> None:
        """target ← decay · target + (1 − decay) · current weights and buffers."""
        if self.target_decay == 1.0:
            return
        for name, value in self.model.state_dict().items():
            kept = self.target[name]
            if kept.is_floating_point():
                kept.lerp_(value, 1.0 - self.target_decay)
            else:
                kept.copy_(value)

    def first_step(self, radius: Tensor | float = 0.0,  # type: ignore[override]
                   zero_grad: bool = False) -> None:
        """Move to w + e with e = radius · g/‖g‖ (T²g/‖Tg‖ in adaptive mode)."""
        super().first_step(zero_grad, rho=radius)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("TRAM.step needs a closure that runs the model, computes the loss "
                             "and calls backward")
        seen: dict[str, Any] = {}

        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            seen["call"], seen["logits"] = (args, kwargs), output

        handle = self.model.register_forward_hook(record, with_kwargs=True)
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            handle.remove()
        if "call" not in seen:
            raise RuntimeError("TRAM.step: the closure did not call the model given to TRAM")
        args, kwargs = seen["call"]
        radius = self.logit_scale * logit_divergence(
            self.target_logits(*args, **kwargs), seen["logits"].detach(), self.divergence)
        self.update_target()
        self.first_step(radius)
        with torch.enable_grad(), preserve_batchnorm_stats(None, self._bn_layers):
            closure()
        self.second_step()
        self.last_radius = radius.detach()
        return loss

    def _wrapper_state(self) -> dict[str, Any]:
        return {"target": {k: v.clone() for k, v in self.target.items()}}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        if sorted(state["target"]) != sorted(self.target):
            raise ValueError("TRAM target weights do not match the model's state_dict keys")
        for name, value in state["target"].items():
            self.target[name].copy_(value)


@TECHNIQUES.register(
    "tram",
    summary="TRAM: SAM whose radius is the logit divergence from a parameter target "
    "(initial weights, previous iterate or an EMA).",
    papers=(39,),
    search_space={"logit_scale": ("log_uniform", 0.1, 100.0)},
)
@dataclass
class TrustRegionAware(Technique):
    """Wrap the optimizer in :class:`TRAM` (two forward-backward passes and one no-grad
    forward of the target per step)."""

    # ρ_t = logit_scale · divergence (no default in the official code)
    logit_scale: Annotated[float, Interval(0, math.inf, closed="left")] = 1.0
    divergence: Divergence = "forward"  # forward KL(target‖current), reverse or symmetric
    # 0: previous iterate (TRAM-θ_{t−1}); 1: initial weights; EMA
    target_decay: Annotated[float, Interval(0, 1)] = 0.0
    adaptive: bool = False  # scale e by w² as adaptive SAM (the official option)
    preserve_batchnorm: bool = True  # keep BN statistics from the second pass out

    touches = frozenset({"step"})

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        return TRAM(optimizer, model, self.logit_scale, self.divergence, self.target_decay,
                    self.adaptive, self.preserve_batchnorm)
