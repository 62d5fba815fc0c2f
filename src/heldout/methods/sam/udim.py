"""UDIM: perturb the inputs towards an "unknown domain", take a SAM step from the clean data and
add the gradient of an inconsistency penalty on the last layer's per-example gradients (clean vs
perturbed inputs). BatchNorm statistics move only in the first, unperturbed pass."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from heldout.core.bounds import Annotated, Interval
from heldout.core.checks import check_non_negative
from heldout.core.technique import Technique
from heldout.methods.sam.sam import SAM, preserve_batchnorm_stats
from heldout.registry import TECHNIQUES

__all__ = [
    "UDIM",
    "UnknownDomainInconsistency",
    "inconsistency_penalty",
    "per_example_linear_gradients",
    "udim_input_perturbation",
]

Divergence = Literal["forward", "reverse", "symmetric"]
InputNormalization = Literal["batch", "example"]


def _trainable(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def per_example_linear_gradients(
    features: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, ...]:
    """Per-example gradients of CE(W h_i + b, y_i) with respect to W (and b), as
    ``(n, *W.shape)`` (and ``(n, *b.shape)``), by ``vmap(grad(...))``.

    The result stays differentiable with respect to ``features``, ``weight`` and ``bias``
    (regular autograd composes with ``torch.func``), so a penalty on it can be
    back-propagated into the whole network.

    Example:
        >>> h, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> gw, gb = per_example_linear_gradients(h, y, torch.zeros(2, 3), torch.zeros(2))
        >>> gw.shape, gb.shape
        (torch.Size([5, 2, 3]), torch.Size([5, 2]))
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (n, d), got shape {tuple(features.shape)}")

    if bias is None:
        def loss_one(w: Tensor, h: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(F.linear(h.unsqueeze(0), w), y.unsqueeze(0))

        return (vmap(grad(loss_one), in_dims=(None, 0, 0))(weight, features, targets),)

    def loss_one_biased(w: Tensor, b: Tensor, h: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(F.linear(h.unsqueeze(0), w, b), y.unsqueeze(0))

    per_example = vmap(grad(loss_one_biased, argnums=(0, 1)), in_dims=(None, None, 0, 0))
    return tuple(per_example(weight, bias, features, targets))


def inconsistency_penalty(clean: Sequence[Tensor], perturbed: Sequence[Tensor]) -> Tensor:
    """UDIM's inconsistency regularizer R on per-example gradients of the last layer.

    ``clean[k]`` and ``perturbed[k]`` hold the per-example gradients ``(n, *shape_k)`` of
    parameter k on the clean and the perturbed inputs. With G and G̃ the gradients of all
    parameters side by side and μ the clean mean:
    v = mean_i (G_i − μ)², ṽ = mean_i (G̃_i − μ)² (centred on the *clean* mean, as the
    official code), v̄ = (v + ṽ)/2, and

        R = ½ [mean_d (v_d − v̄_d)² + mean_d (ṽ_d − v̄_d)²] + Σ_k mean_i ‖G̃_{k,i}‖² / dim_k,

    a Fishr-style variance match plus the perturbed gradients' squared norms per dimension.

    Example:
        >>> inconsistency_penalty([torch.tensor([[1.0], [3.0]])], [torch.tensor([[2.0], [6.0]])])
        tensor(32.2500)
    """
    if len(clean) != len(perturbed) or not clean:
        raise ValueError("clean and perturbed need the same non-zero number of parameters")
    flat_clean = torch.cat([g.reshape(len(g), -1) for g in clean], dim=1)
    flat_perturbed = torch.cat([g.reshape(len(g), -1) for g in perturbed], dim=1)
    mean = flat_clean.mean(dim=0)
    var_clean = (flat_clean - mean).pow(2).mean(dim=0)
    var_perturbed = (flat_perturbed - mean).pow(2).mean(dim=0)
    average = (var_clean + var_perturbed) / 2
    variance_match = ((var_clean - average).pow(2).mean()
                      + (var_perturbed - average).pow(2).mean()) / 2
    norms = sum(g.reshape(len(g), -1).pow(2).sum(dim=1).mean() / g[0].numel() for g in perturbed)
    return variance_match + norms


def _normalize_direction(direction: Tensor, how: InputNormalization) -> Tensor:
    if how == "batch":  # the official F.normalize(grad, dim=0): each feature across the batch
        return F.normalize(direction, p=2.0, dim=0, eps=1e-12)
    flat = direction.reshape(len(direction), -1)
    return F.normalize(flat, p=2.0, dim=1, eps=1e-12).view_as(direction)


def _ascent_pass(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[Tensor],
    rho: float,
    site: nn.Module | None,
) -> tuple[Tensor, list[Tensor | None], Tensor]:
    """Forward-backward at (w, x + δ), δ = 0: returns the loss, e = ρ g̃/‖g̃‖ and the
    gradient of CE + ρ‖∇_w CE‖ with respect to δ (double backward). ``site`` None: δ is added
    to the inputs; else to the output of that module."""
    deltas: list[Tensor] = []

    def add_delta(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        delta = torch.zeros_like(output, requires_grad=True)
        deltas.append(delta)
        return output + delta

    with torch.enable_grad():
        if site is None:
            delta = torch.zeros_like(inputs, requires_grad=True)
            logits = model(inputs + delta)
        else:
            handle = site.register_forward_hook(add_delta)
            try:
                logits = model(inputs)
            finally:
                handle.remove()
            if len(deltas) != 1:
                raise RuntimeError(f"the perturbed module ran {len(deltas)} times; UDIM needs "
                                   "a module that runs once per forward")
            delta = deltas[0]
        loss = F.cross_entropy(logits, targets)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [g for g in grads if g is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in used]))
        (direction,) = torch.autograd.grad(loss + rho * grad_norm, [delta])
    scale = rho / (grad_norm.detach() + 1e-12)
    e = [None if g is None else g.detach() * scale for g in grads]
    return loss.detach(), e, direction


def udim_input_perturbation(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    rho: float = 0.05,
    input_step: float = 0.005,
    normalize: InputNormalization = "batch",
) -> Tensor:
    """UDIM's perturbed inputs x̃ = x + ρ_x · normalize(∇_x [CE(x) + ρ ‖∇_θ CE(x)‖]).

    ``normalize="batch"`` (the official code) scales each input coordinate's column of the
    gradient to unit norm across the batch; ``"example"`` normalizes each example's gradient.
    The gradient of the gradient norm is a double backward. ``model`` is left unchanged
    (BatchNorm running statistics move as in one training forward pass).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> udim_input_perturbation(net, x, y, input_step=0.1).shape
        torch.Size([5, 3])

    References:
        Unknown Domain Inconsistency Minimization for Domain Generalization
        (arXiv:2403.07329), official code aailabkaist/UDIM (``IADA_FINAL``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    _, _, direction = _ascent_pass(model, inputs, targets, params, rho, None)
    return inputs.detach() + input_step * _normalize_direction(direction, normalize)


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear; pass classifier=")
    return linears[-1]


class UDIM(SAM):
    """Unknown Domain Inconsistency Minimization around any base optimizer.

    Call ``set_batch(x, y)`` before each ``step(closure)``. For the first ``warmup_steps``
    steps it is plain SAM with radius ρ. Afterwards one step is:

    1. x̃ = x + δ with δ = ρ_x · normalize(∇_δ [CE(x + δ) + ρ ‖∇_w CE(x + δ)‖]) at δ = 0
       (:func:`udim_input_perturbation`), and e = ρ g̃/‖g̃‖ with g̃ = ∇_w CE(x + δ) from the
       same pass (at δ = 0, as the official code starts x̃ from x);
    2. g_sam: the closure at w + e (BatchNorm statistics frozen), then back to w;
    3. R = :func:`inconsistency_penalty` of the classifier's per-example gradients on
       [x; x̃] (:func:`per_example_linear_gradients`, one forward of the 2n rows);
    4. the base optimizer steps with g_sam + λ ∇_w R.

    ``classifier`` is the last linear layer (default: the last ``nn.Linear`` of ``model``);
    the model's output must be its output. ``perturb_at`` says where δ is added: ``"input"``
    (floating-point inputs), a module name (its output, e.g. a token embedding), or
    ``"auto"``: the inputs when they are floating point, else the output of the first module
    that holds parameters. ``last_inconsistency`` holds R of the last step. The passes of
    steps 1 and 3 use cross-entropy; the closure's loss (the Trainer's) is used in step 2.

    Sources. The structure (SAM on the source data, an input perturbation that ascends the
    loss plus ρ times its gradient norm, a last-layer gradient-variance penalty between
    clean and perturbed data) is the paper's; the details follow the official code
    (``IADA_FINAL.step``), checked line by line: δ starts at 0, so e comes from the clean
    gradient; the input direction is normalized across the batch dimension; the variance of
    the perturbed gradients is centred on the clean mean; R adds the perturbed per-example
    squared gradient norms divided by each parameter's size; the per-example losses are not
    divided by the batch size (BackPACK's ``BatchGrad`` of the summed loss). Simplified or
    left out: the AdvStyle variant (ascending the images' channel mean and std instead of the
    pixels), the per-domain penalty (``domain_wise_inconsistency``), the ρ scheduler (ρ is
    constant, as in the published runs), loading a pretrained ERM/SAM checkpoint, and
    BatchNorm replaced by functorch-safe layers (here BN normalizes by the batch — the 2n
    rows of step 3 together — with its running statistics frozen after step 1).

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = UDIM(torch.optim.SGD(model.parameters(), lr=0.1), model, input_step=0.1)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> def closure():
        ...     opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward()
        ...     return loss
        >>> opt.set_batch(x, y); loss = opt.step(closure)

    References:
        Unknown Domain Inconsistency Minimization for Domain Generalization
        (arXiv:2403.07329); official code aailabkaist/UDIM (``iada_final.py``).
    """

    model: nn.Module  # always given here (SAM's is optional)

    def __init__(
        self,
        base: torch.optim.Optimizer,
        model: nn.Module,
        rho: float = 0.05,
        input_step: float = 0.005,
        weight: float = 1.0,
        warmup_steps: int = 0,
        classifier: nn.Linear | None = None,
        perturb_at: str = "auto",
        normalize: InputNormalization = "batch",
        preserve_batchnorm: bool = True,
    ) -> None:
        for name, value in (("input_step", input_step), ("weight", weight),
                            ("warmup_steps", warmup_steps)):
            check_non_negative("UDIM", name, value)
        if normalize not in get_args(InputNormalization):
            raise ValueError(f"normalize must be 'batch' or 'example', got {normalize!r}")
        super().__init__(base, rho=rho, adaptive=False, eta=0.0,
                         model=model if preserve_batchnorm else None)
        self.model = model
        self.rho = rho  # of the UDIM phase; the warm-up SAM steps read each group's "rho"
        self.input_step = input_step
        self.weight = weight
        self.warmup_steps = warmup_steps
        self.classifier = classifier if classifier is not None else _last_linear(model)
        modules = dict(model.named_modules())
        if perturb_at not in ("auto", "input") and perturb_at not in modules:
            raise ValueError(f"perturb_at={perturb_at!r} is not 'auto', 'input' or a module of "
                             "the model")
        self.perturb_at = perturb_at
        self.normalize = normalize
        self.steps = 0
        self.last_inconsistency: Tensor | None = None
        self._batch: tuple[Tensor, Tensor] | None = None

    def set_batch(self, inputs: Tensor, targets: Tensor) -> None:
        """The batch of the next step (class indices as targets)."""
        self._batch = (inputs, targets)

    def _site(self, inputs: Tensor) -> nn.Module | None:
        if self.perturb_at == "input" or (self.perturb_at == "auto"
                                          and inputs.is_floating_point()):
            if not inputs.is_floating_point():
                raise ValueError("UDIM perturbs the inputs, which are not floating point; "
                                 "set perturb_at to a module (an embedding)")
            return None
        if self.perturb_at != "auto":
            return dict(self.model.named_modules())[self.perturb_at]
        return next(m for m in self.model.modules()
                    if m is not self.model and any(True for _ in m.parameters(recurse=False)))

    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("UDIM.step needs a closure that recomputes the loss and gradients")
        warming_up = self.steps < self.warmup_steps
        loss = super().step(closure) if warming_up else self._udim_step(closure)
        self.steps += 1
        self._batch = None
        return loss

    def _udim_step(self, closure: Callable[[], Tensor]) -> Tensor:
        if self._batch is None:
            raise RuntimeError("UDIM needs the batch: call set_batch(x, y) before each step")
        inputs, targets = self._batch
        params = _trainable(self)
        site = self._site(inputs)
        # 1. input perturbation and e, from one double-backward pass at (w, x)
        loss, e, direction = _ascent_pass(self.model, inputs, targets, params, self.rho, site)
        delta = self.input_step * _normalize_direction(direction, self.normalize)
        moved = [(p, v) for p, v in zip(params, e, strict=True) if v is not None]
        # 2. the SAM gradient on clean data at w + e
        with torch.no_grad():
            torch._foreach_add_([p for p, _ in moved], [v for _, v in moved])
        try:
            with torch.enable_grad(), preserve_batchnorm_stats(None, self._bn_layers):
                closure()
        finally:
            with torch.no_grad():
                torch._foreach_sub_([p for p, _ in moved], [v for _, v in moved])
        # 3. the inconsistency penalty at w, on [x; x̃]
        with torch.enable_grad(), preserve_batchnorm_stats(None, self._bn_layers):
            penalty = self._inconsistency(inputs, targets, delta, site)
            penalty_grads = torch.autograd.grad(penalty, params, allow_unused=True)
        # 4. g_sam + λ ∇R
        with torch.no_grad():
            for p, g in zip(params, penalty_grads, strict=True):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = self.weight * g
                else:
                    p.grad.add_(g, alpha=self.weight)
        self.base.step()
        self.last_inconsistency = penalty.detach()
        return loss

    def _inconsistency(self, inputs: Tensor, targets: Tensor, delta: Tensor,
                       site: nn.Module | None) -> Tensor:
        seen: dict[str, Tensor] = {}

        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            seen["features"], seen["logits"] = args[0], output

        def shift(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            return output + torch.cat([torch.zeros_like(delta), delta])

        handles = [self.classifier.register_forward_hook(record)]
        if site is not None:
            handles.append(site.register_forward_hook(shift))
        try:
            if site is None:
                logits = self.model(torch.cat([inputs, inputs + delta]))
            else:
                logits = self.model(torch.cat([inputs, inputs]))
        finally:
            for handle in handles:
                handle.remove()
        if seen.get("logits") is not logits:
            raise ValueError("UDIM: the model's output is not its classifier's output; pass the "
                             "last linear layer as classifier=")
        both = torch.cat([targets, targets])
        grads = per_example_linear_gradients(seen["features"], both, self.classifier.weight,
                                             self.classifier.bias)
        n = len(targets)
        return inconsistency_penalty([g[:n] for g in grads], [g[n:] for g in grads])

    def _wrapper_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "warmup_steps": self.warmup_steps}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.warmup_steps = state["warmup_steps"]


@TECHNIQUES.register(
    "udim",
    summary="UDIM: SAM plus an inconsistency penalty between the last-layer gradients on "
    "clean and adversarially perturbed inputs.",
    papers=(57,),
    search_space={"rho": ("choice", [0.01, 0.02, 0.05, 0.1]),
                  "input_step": ("log_uniform", 1e-3, 10.0)},
)
@dataclass
class UnknownDomainInconsistency(Technique):
    """Wrap the optimizer in :class:`UDIM`; hand it each batch at ``on_batch_start`` (list
    UDIM after techniques that change the batch) and its warm-up length at ``on_fit_start``.

    Follows the official code where paper and code differ (the code's choices are the ones
    listed in :class:`UDIM`); omits the AdvStyle variant (ascending the images' channel
    statistics), TRAM-like ρ schedules and the per-domain split of the penalty.
    """

    # SAM radius (scripts: 0.05; grid 0.01-0.1)
    rho: Annotated[float, Interval(0, math.inf, closed="left")] = 0.05
    # ρ_x, the input step (code default; scripts' 10 is AdvStyle's)
    input_step: Annotated[float, Interval(0, math.inf, closed="left")] = 0.005
    # λ on the inconsistency gradient (scripts' worst_weight)
    weight: Annotated[float, Interval(0, math.inf, closed="left")] = 1.0
    # plain SAM for this share of the steps (scripts: ratio 5)
    warmup_fraction: Annotated[float, Interval(0, 1)] = 0.2
    perturb_at: str = "auto"  # "input", a module name, or auto (embedding for token inputs)
    normalize: InputNormalization = "batch"  # the code normalizes across the batch
    preserve_batchnorm: bool = True  # BN statistics move in the first pass only
    _optimizer: UDIM | None = field(default=None, init=False, repr=False)

    touches = frozenset({"step"})

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        self._optimizer = UDIM(optimizer, model, self.rho, self.input_step, self.weight,
                               perturb_at=self.perturb_at, normalize=self.normalize,
                               preserve_batchnorm=self.preserve_batchnorm)
        return self._optimizer

    def on_fit_start(self, state: Any) -> None:
        if self._optimizer is not None:
            self._optimizer.warmup_steps = int(self.warmup_fraction * state.max_steps)

    def on_batch_start(self, state: Any) -> None:
        if self._optimizer is not None and state.batch is not None:
            inputs, targets = state.batch[0], state.batch[1]
            self._optimizer.set_batch(inputs, targets)
