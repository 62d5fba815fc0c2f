"""Lazy vs rich training (#11): the empirical NTK, its alignment with the targets and its
distance from the kernel at initialization.

In the lazy regime the network stays close to its linearization, so the empirical neural
tangent kernel barely moves from its value at initialization (kernel distance ≈ 0) and the
network can only fit the targets as far as the *initial* kernel is aligned with them. Feature
learning (the rich regime) moves the kernel and typically raises its alignment with the
targets; in the lazy→rich account of grokking, test loss drops when that happens.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, vmap

from heldout.core.bounds import Annotated, Ge
from heldout.core.functional import functional_call
from heldout.core.measure import EvalContext, Measure, eval_mode
from heldout.core.per_example import check_batch_norm, differentiable_parameters
from heldout.core.sampling import sample_indices
from heldout.registry import MEASURES

__all__ = [
    "NTKAlignment",
    "empirical_ntk",
    "kernel_alignment",
    "kernel_distance",
    "target_matrix",
]


# Most Jacobian entries (n examples × a block of outputs × P parameters) held at once: the
# outputs are processed in blocks as large as this allows (one output at a time at least).
_JACOBIAN_BUDGET = 2**24


def _jacobian_block(
    model: nn.Module, inputs: Tensor, outputs: slice, chunk_size: int
) -> Tensor:
    """∂f_k(x_i)/∂θ for the outputs k in ``outputs``, as an ``(n, B, P)`` float64 tensor;
    one ``vmap(jacrev(...))`` per chunk of examples, in eval mode."""
    check_batch_norm(model)
    params = differentiable_parameters(model)
    buffers = dict(model.named_buffers())

    def block_of_one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(-1)[outputs]

    per_example = vmap(jacrev(block_of_one), in_dims=(None, 0))
    out: Tensor | None = None
    for start in range(0, len(inputs), chunk_size):
        x = inputs[start : start + chunk_size]
        with eval_mode(model), torch.enable_grad():
            jac = per_example(params, x)
        if out is None:
            block = next(iter(jac.values())).shape[1]
            width = sum(p.numel() for p in params.values())
            out = torch.empty(len(inputs), block, width, dtype=torch.float64,
                              device=next(iter(params.values())).device)
        column = 0
        for name in params:  # each chunk copied once, straight into its place
            part = jac[name].reshape(len(x), out.shape[1], -1)
            out[start : start + len(x), :, column : column + part.shape[2]].copy_(part)
            column += part.shape[2]
    assert out is not None  # callers pass at least one example
    return out


def empirical_ntk(model: nn.Module, inputs: Tensor, *, chunk_size: int = 32) -> Tensor:
    """The ``(n, n)`` trace-NTK Gram matrix of ``model`` on ``inputs``, in float64.

    K(x, x') = Σ_k ⟨∂f_k(x)/∂θ, ∂f_k(x')/∂θ⟩, summed over the C outputs f_k (logits) and
    taken over the trainable parameters θ (every floating one for a frozen copy), i.e. the
    trace over outputs of the C×C-block NTK. The Jacobian rows come from
    ``vmap(jacrev(...))`` over ``functional_call`` in chunks of ``chunk_size`` examples, for
    a block of outputs at a time (as many as keep n × block × P under 2**24 numbers), and
    K += Σ_{k in block} J_k J_kᵀ: n·C vector-Jacobian products in all. Eval mode (BatchNorm
    running statistics, no dropout); the model is left as it was.

    References:
        Neural Tangent Kernel: Convergence and Generalization in Neural Networks
        (arXiv:1806.07572).

    Example:
        >>> net = torch.nn.Linear(3, 2, bias=False)  # f(x) = Wx: K(x, x') = 2 x·x'
        >>> x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
        >>> empirical_ntk(net, x)
        tensor([[2., 2.],
                [2., 4.]], dtype=torch.float64)
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = len(inputs)
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        outputs = model(inputs[:1]).reshape(-1).numel()
    width = sum(p.numel() for p in differentiable_parameters(model).values())
    block = max(1, min(outputs, _JACOBIAN_BUDGET // (n * width)))
    kernel = torch.zeros(n, n, dtype=torch.float64, device=inputs.device)
    for start in range(0, outputs, block):  # blocks of outputs; examples are vmapped
        jac = _jacobian_block(model, inputs, slice(start, start + block), chunk_size)
        flat = jac.reshape(n, -1)  # Σ_k J_k J_kᵀ = (J flattened over (k, θ)) (same)ᵀ
        kernel += flat @ flat.T
    return kernel


def target_matrix(targets: Tensor, num_outputs: int | None = None) -> Tensor:
    """Targets as an ``(n, C)`` float64 matrix Y: one-hot rows for class indices (C =
    ``num_outputs``, default the largest index + 1), real-valued targets reshaped to
    ``(n, -1)``."""
    if targets.is_floating_point():
        return targets.reshape(len(targets), -1).double()
    classes = num_outputs if num_outputs is not None else int(targets.max()) + 1
    return F.one_hot(targets.long(), classes).double()


def _center(matrix: Tensor) -> Tensor:
    """H M H with H = I − 11ᵀ/n: subtract row and column means, add back the grand mean."""
    return matrix - matrix.mean(0, keepdim=True) - matrix.mean(1, keepdim=True) + matrix.mean()


def _cosine(a: Tensor, b: Tensor) -> float:
    # ⟨a, b⟩ / sqrt(⟨a, a⟩⟨b, b⟩): exactly 1.0 for a == b (sqrt of a rounded square is exact)
    norms = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / norms if norms > 0 else float("nan")


def kernel_alignment(kernel: Tensor, targets: Tensor, *, centered: bool = True) -> float:
    """Kernel-target alignment A(K, Y) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F).

    ``targets`` is the ``(n, C)`` matrix Y (see :func:`target_matrix`) or a vector y, for
    which A = yᵀKy / (‖K‖_F ‖y‖²). With ``centered`` (the default) both Gram matrices are
    centered first, K → HKH and YYᵀ → HYYᵀH with H = I − 11ᵀ/n (centered kernel alignment),
    so a constant offset in the kernel or the targets (the class prior, for one-hot Y) does
    not count as alignment; A ∈ [0, 1] for a PSD kernel. Uncentered, A is Cristianini's
    original alignment. NaN if either centered Gram matrix is zero.

    The lazy→rich analysis of grokking tracks this alignment of the NTK with y. The
    derived notebooks (said to follow the authors' supplementary code) center y and subtract
    the kernel's column means, which gives the same numerator yᵀ(HK)y = (Hy)ᵀK(Hy) but the
    norm ‖HK‖_F instead of ‖HKH‖_F in the denominator; this function uses the symmetric,
    standard centering [recon: the paper's exact normalization was not checked].

    References:
        Algorithms for Learning Kernels Based on Centered Alignment (arXiv:1203.0550).
        Grokking as the Transition from Lazy to Rich Training Dynamics (arXiv:2310.06110).

    Example:
        >>> y = torch.tensor([1.0, -1.0])
        >>> kernel_alignment(torch.outer(y, y), y)  # the ideal kernel yyᵀ
        1.0
    """
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square matrix, got shape {tuple(kernel.shape)}")
    y = targets.double().reshape(len(targets), -1)
    if len(y) != len(kernel):
        raise ValueError(f"kernel is {len(kernel)}x{len(kernel)} but there are {len(y)} targets")
    k, ideal = kernel.double(), y @ y.T
    if centered:
        k, ideal = _center(k), _center(ideal)
    return _cosine(k, ideal)


def kernel_distance(initial: Tensor, current: Tensor) -> float:
    """Kernel distance 1 − ⟨K₀, K_t⟩_F / (‖K₀‖_F ‖K_t‖_F) ∈ [0, 1] for PSD kernels: 0 when the
    kernel only changed scale (lazy), larger as the features change (rich).

    References:
        Deep learning versus kernel learning: an empirical study of loss landscape geometry
        and the time evolution of the Neural Tangent Kernel (arXiv:2010.15110).

    Example:
        >>> kernel_distance(torch.eye(2), 3 * torch.eye(2))
        0.0
    """
    if initial.shape != current.shape:
        raise ValueError(f"kernels differ in shape: {tuple(initial.shape)} vs "
                         f"{tuple(current.shape)}")
    return 1.0 - _cosine(initial.double(), current.double())


@MEASURES.register(
    "ntk_alignment",
    summary="Empirical-NTK alignment with the targets, and the NTK's distance from its value "
    "at initialization (lazy vs rich).",
    papers=(11,),
    references=(
        "Algorithms for Learning Kernels Based on Centered Alignment (arXiv:1203.0550)",
        "Deep learning versus kernel learning: an empirical study of loss landscape geometry "
        "and the time evolution of the Neural Tangent Kernel (arXiv:2010.15110)",
    ),
)
@dataclass
class NTKAlignment(Measure):
    """Trace-NTK (:func:`empirical_ntk`) on a fixed random sample of each listed split.

    Reports ``ntk_alignment`` (:func:`kernel_alignment` of the current kernel with the
    targets: one-hot for class indices, the values for regression). When the run knows the
    weights at initialization (``ctx.initial_state``) it also reports
    ``ntk_alignment_init`` (the same for the initial kernel, loaded into a copy of the model)
    and ``ntk_distance`` (:func:`kernel_distance` between the two). Costs two kernels (n·C
    per-example gradients each) per evaluation. [recon] sample_size = 128 and centering are
    choices, not paper values; the derived notebooks track the alignment on the test points
    too (add ``"test"`` to ``splits``).

    References:
        Grokking as the Transition from Lazy to Rich Training Dynamics (arXiv:2310.06110).

    Example:
        >>> from heldout.core import evaluate
        >>> net = torch.nn.Linear(4, 3)
        >>> data = (torch.randn(10, 4), torch.randint(0, 3, (10,)))
        >>> init = {k: v.clone() for k, v in net.state_dict().items()}
        >>> out = evaluate(net, {"train": data}, [NTKAlignment()], initial_state=init)
        >>> sorted(out), out["train/ntk_distance"]
        (['train/ntk_alignment', 'train/ntk_alignment_init', 'train/ntk_distance'], 0.0)
    """

    # examples in the Gram matrix (drawn without replacement)
    sample_size: Annotated[int, Ge(2)] = 128
    chunk_size: Annotated[int, Ge(1)] = 32  # examples per vmap(grad) call
    seed: int = 0  # seed of the sample draw (the same examples at every evaluation)
    centered: bool = True  # centered kernel alignment (HKH vs HYYᵀH)
    splits: tuple[str, ...] = ("train",)  # where to compute it (expensive)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        index = sample_indices(len(y), self.sample_size, self.seed).to(y.device)
        x, y = x[index], y[index]
        kernel = empirical_ntk(ctx.model, x, chunk_size=self.chunk_size)
        with eval_mode(ctx.model), torch.no_grad():
            num_outputs = ctx.model(x[:1]).reshape(-1).numel()
        targets = target_matrix(y, num_outputs)
        out = {"ntk_alignment": kernel_alignment(kernel, targets, centered=self.centered)}
        if ctx.initial_state is not None:
            initial_model = copy.deepcopy(ctx.model)
            initial_model.load_state_dict(ctx.initial_state)
            initial = empirical_ntk(initial_model, x, chunk_size=self.chunk_size)
            out["ntk_alignment_init"] = kernel_alignment(initial, targets, centered=self.centered)
            out["ntk_distance"] = kernel_distance(initial, kernel)
        return out
