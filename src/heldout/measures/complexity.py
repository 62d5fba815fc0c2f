"""Local complexity (#30): how many neuron hyperplanes cut a small neighbourhood of a point.

Around an input ``x`` take ``P`` random orthonormal directions ``v_1 .. v_P`` and the
cross-polytope with the ``2P`` vertices ``x ± r·v_p``. Run the vertices through the network
and record every hidden neuron's *pre-activation* (the input of each activation module). A
neuron whose pre-activation sign at some vertex differs from its sign at the first vertex has
its boundary ``{pre-activation = 0}`` crossing the neighbourhood; the local complexity (LC) of
``x`` is the number of such neurons, per layer and summed over layers. It approximates the
density of linear regions ("spline partition regions") near ``x``: exact for the first layer
(a hyperplane meets a convex polytope iff its vertices are not all on one side), a coarse
approximation deeper, and for non-ReLU activations (GELU) only a proxy. The mean LC over
training points, test points and uniform random points is tracked over training: in the
paper it rises, then falls long after interpolation as the regions migrate away from the
training points towards the decision boundary ("delayed robustness").

Verified against the official code (``AhmedImtiazPrio/grok-adversarial``: ``samplers.py``,
``local_complexity.py``, ``configs.py``, ``train_mlp_mnist.py``) and the paper's Figure 4
description: the orthonormal frame (one draw from a seed, shared by all points, rows scaled
to norm r), the ``2·(n/2)`` vertices without the centre, the sign comparison against the first
vertex, counts summed over layers, random points uniform in the data range (``[0, 1]^784``
there; here the per-coordinate box of the split). Defaults: ``n_vertices = 50`` is the MNIST
MLP config's ``hull_n``; ``radius = 0.5`` is one of its radii {0.05, 0.1, 0.5, 1, 5} (the one the
CPU calibration of claim C5 uses); ``max_points = 1024`` is the CIFAR config's ``approx_n``.
Two differences: the official MLP hooks every ``nn.Linear``, the head included, while here
the layers are the activation inputs (the head's logit signs are reported apart with
``include_output``); and the radius must be chosen relative to the data scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.measure import EvalContext, Measure
from heldout.measures.information import hidden_layers
from heldout.models.layers import TokenLinear
from heldout.registry import MEASURES

__all__ = [
    "LocalComplexity",
    "continuous_inputs",
    "cross_polytope",
    "local_complexity",
    "orthonormal_directions",
]


def continuous_inputs(model: nn.Module, inputs: Tensor) -> Tensor:
    """``inputs`` as floats the model accepts: integer tokens become the concatenated one-hot
    vectors of the model's first :class:`~heldout.models.layers.TokenLinear` (which maps a
    float input of width ``n_positions * vocab`` through its plain linear map); floats pass
    through. Raises ValueError for integer inputs to a model without a TokenLinear."""
    if inputs.is_floating_point():
        return inputs
    token_layer = next((m for m in model.modules() if isinstance(m, TokenLinear)), None)
    if token_layer is None:
        raise ValueError("integer inputs need a model whose first layer is a TokenLinear "
                         "(to move them into a continuous one-hot space)")
    one_hot = F.one_hot(inputs.long(), token_layer.vocab)
    return one_hot.reshape(*inputs.shape[:-1], -1).to(token_layer.weight.dtype)


def orthonormal_directions(
    dim: int, n_directions: int, generator: torch.Generator | None = None
) -> Tensor:
    """``(n_directions, dim)`` orthonormal rows, uniformly random (QR of a Gaussian matrix
    with the signs fixed so that R has a positive diagonal)."""
    if not 1 <= n_directions <= dim:
        raise ValueError(f"n_directions must be in [1, {dim}] (the input dimension), "
                         f"got {n_directions}")
    gaussian = torch.randn(dim, n_directions, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)
    return q.t()


def cross_polytope(points: Tensor, radius: float, directions: Tensor) -> Tensor:
    """The vertices ``x + r·v_1, .., x + r·v_P, x − r·v_1, .., x − r·v_P`` of each point:
    ``(N, 2P, *point_shape)`` for ``points`` ``(N, *point_shape)`` and ``directions``
    ``(P, D)`` with ``D`` = the number of elements of a point (unit rows)."""
    flat = points.reshape(len(points), 1, -1)
    step = radius * directions.to(flat.dtype).to(flat.device)[None]
    vertices = torch.cat([flat + step, flat - step], dim=1)
    return vertices.reshape(len(points), len(directions) * 2, *points.shape[1:])


def local_complexity(
    model: nn.Module,
    points: Tensor,
    *,
    radius: float = 0.5,
    n_vertices: int = 50,
    layers: Sequence[str] = (),
    include_output: bool = False,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
    batch_rows: int = 16384,
) -> dict[str, Tensor]:
    """Per-point local complexity: ``{"layer<l>": (N,) counts, ..., "total": (N,)}``.

    For each point, the number of neurons of each hidden layer (the inputs of the modules of
    :func:`~heldout.measures.information.hidden_layers`, i.e. the pre-activations; every
    element counts, so a convolution's neurons count per position) whose sign is not the same
    at all ``n_vertices`` vertices of the cross-polytope of radius ``radius`` around it. The
    ``n_vertices // 2`` orthonormal directions come from ``generator`` (or pass
    ``directions``, ``(P, D)`` unit rows) and are shared by all points. ``"total"`` sums the
    hidden layers; with ``include_output`` the signs of the model's outputs are counted too,
    under ``"output"`` (not in the total). Integer token inputs are one-hot encoded first
    (:func:`continuous_inputs`). The model runs in eval mode under ``no_grad`` in chunks of
    at most ``batch_rows`` vertex rows; its hooks are removed and its mode restored after.

    References:
        Humayun, Balestriero, Baraniuk. Deep Networks Always Grok and Here is Why.
        arXiv:2402.15555.

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        ...     _ = net[0].bias.copy_(torch.tensor([-0.1, -3.0]))  # kinks at 0.1 and 3.0
        >>> local_complexity(net, torch.zeros(1, 1), radius=0.5, n_vertices=2)["total"]
        tensor([1])
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if n_vertices < 2 or n_vertices % 2:
        raise ValueError(f"n_vertices must be even and >= 2, got {n_vertices}")
    points = continuous_inputs(model, points)
    dim = math.prod(points.shape[1:])
    if directions is None:
        directions = orthonormal_directions(dim, n_vertices // 2, generator)
    elif directions.shape[-1] != dim:
        raise ValueError(f"directions have {directions.shape[-1]} coordinates, points {dim}")
    n_frame = 2 * len(directions)
    chosen = hidden_layers(model, layers, allow_empty=True)  # linear model: LC = 0
    keys = [f"layer{i + 1}" for i in range(len(chosen))]
    counts: dict[str, list[Tensor]] = {k: [] for k in keys}
    if include_output:
        counts["output"] = []

    def crossing(pre: Tensor, n_points: int) -> Tensor:
        # some vertex's sign differs from the first vertex's iff the signs are not all equal,
        # iff sign(min) != sign(max) over the vertices (sign is monotone): two reductions
        # instead of a (points, vertices, neurons) comparison, ~10x faster
        values = pre.detach().reshape(n_points, n_frame, -1)
        return (torch.sign(values.amin(dim=1)) != torch.sign(values.amax(dim=1))).sum(dim=-1)

    state = {"n": 0}

    def hook_for(key: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            counts[key].append(crossing(args[0], state["n"]))
        return hook

    chunk = max(1, batch_rows // n_frame)
    handles = [m.register_forward_hook(hook_for(k)) for k, (_, m) in zip(keys, chosen,
                                                                         strict=True)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(points), chunk):
                block = points[start : start + chunk]
                state["n"] = len(block)
                vertices = cross_polytope(block, radius, directions)
                output = model(vertices.reshape(-1, *points.shape[1:]))
                if include_output:
                    counts["output"].append(crossing(output, len(block)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in counts.items()}
    total = torch.zeros(len(points), dtype=torch.long, device=points.device)
    for k in keys:
        total = total + out[k]
    out["total"] = total
    return out


@MEASURES.register(
    "local_complexity",
    summary="Neurons whose pre-activation hyperplane cuts a small cross-polytope around each "
    "point (linear-region density) on data and random points.",
    papers=(30,),
)
@dataclass
class LocalComplexity(Measure):
    """Mean :func:`local_complexity` of the points of each listed split, and of uniform
    random points in the box spanned by the first listed split's inputs.

    Keys: ``local_complexity`` (mean total over the hidden layers), ``local_complexity/layer<l>``
    (mean per layer), with ``include_output`` also ``local_complexity/output``; on the first
    listed split also ``local_complexity_random`` and ``local_complexity_random/layer<l>``.
    At most ``max_points`` points per split (a fixed random subset from ``seed``), the same
    ``n_vertices // 2`` directions for every point, split and evaluation (drawn from
    ``seed``; at most the input dimension). Costs ``n_vertices`` forward passes per point.

    References:
        Humayun, Balestriero, Baraniuk. Deep Networks Always Grok and Here is Why.
        arXiv:2402.15555.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> out = LocalComplexity(radius=0.1).compute(EvalContext(net, "train", (x, y)))
        >>> sorted(out)[:2]
        ['local_complexity', 'local_complexity/layer1']
    """

    radius: Annotated[float, Gt(0)] = 0.5  # r: half-diagonal of the cross-polytope, in input units
    # 2P vertices x ± r·v_p (official MNIST MLP config: hull_n = 50)
    n_vertices: Annotated[int, Ge(2)] = 50
    # points per split, and random points (official CIFAR: approx_n)
    max_points: Annotated[int, Ge(1)] = 1024
    random_points: bool = True  # also measure uniform random points in the data's box
    include_output: bool = False  # also count sign changes of the outputs (reported apart)
    layers: tuple[str, ...] = ()  # module names whose inputs are observed; () = activations
    splits: tuple[str, ...] = ("train", "test")  # where to compute it
    seed: int = 0  # seeds the directions, the subsets and the random points

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        self.splits = tuple(self.splits)
        if self.n_vertices % 2:
            raise ValueError(f"n_vertices must be even, got {self.n_vertices}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, _ = ctx.tensors()
        x = continuous_inputs(ctx.model, x)
        gen = torch.Generator().manual_seed(self.seed)
        dim = math.prod(x.shape[1:])
        directions = orthonormal_directions(dim, min(self.n_vertices // 2, dim), gen)
        if len(x) > self.max_points:
            keep = torch.randperm(len(x), generator=gen)[: self.max_points].to(x.device)
            x = x[keep]
        out = self._summarize("local_complexity", ctx.model, x, directions)
        if self.random_points and ctx.split == self.splits[0]:
            low, high = x.min(dim=0).values, x.max(dim=0).values
            uniform = torch.rand(self.max_points, *x.shape[1:], generator=gen, dtype=x.dtype)
            random_x = low + (high - low) * uniform.to(x.device)
            out.update(self._summarize("local_complexity_random", ctx.model, random_x,
                                       directions))
        return out

    def _summarize(self, name: str, model: nn.Module, points: Tensor,
                   directions: Tensor) -> dict[str, float]:
        counts = local_complexity(model, points, radius=self.radius, layers=self.layers,
                                  include_output=self.include_output, directions=directions,
                                  n_vertices=2 * len(directions))
        out = {name: float(counts.pop("total").double().mean())}
        out.update({f"{name}/{k}": float(v.double().mean()) for k, v in counts.items()})
        return out
