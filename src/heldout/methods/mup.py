"""The Maximal Update Parametrization µP (#54).

µP scales initialization, the readout and per-layer learning rates with width so that the
hyper-parameters tuned on a narrow *base* model transfer to wider ones. The pure functions take
the model and its *base shapes* (per parameter, each dimension's size in the base model, or
``None`` for a dimension that does not grow with width); :func:`base_shapes` builds them from a
base model and :func:`mlp_base_shapes` from a base width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    pass

__all__ = [
    "BaseShapes",
    "MuP",
    "MuReadout",
    "MupParameter",
    "base_shapes",
    "mlp_base_shapes",
    "mu_readout",
    "mup_init_",
    "mup_param_groups",
    "mup_parameters",
    "mup_split_param_groups",
]


BaseShapes = Mapping[str, Sequence[int | None]]
"""Per parameter name, each dimension's size in the base model, or None where the dimension
does not grow with width (a "finite" dimension in µP's terms)."""

MupKind = Literal["input", "hidden", "output", "vector", "fixed"]
OptimizerRule = Literal["adam", "sgd"]


@dataclass(frozen=True)
class MupParameter:
    """How µP sees one parameter: its class and the width multipliers of its fan-in/fan-out.

    ``kind`` is ``hidden`` (fan-in and fan-out both grow with width), ``input`` (only fan-out
    grows: the first layer, embeddings), ``output`` (only fan-in grows: the readout),
    ``vector`` (a 1-D parameter of a width dimension: biases, norm gains) or ``fixed`` (no
    width dimension). A multiplier is ``size / base size``, 1 for a non-width dimension.
    ``readout`` marks an output weight of a :class:`MuReadout` (its forward divides by the
    fan-in multiplier, which changes its rules).
    """

    kind: MupKind
    fan_in_mult: float = 1.0
    fan_out_mult: float = 1.0
    fan_in: int = 1
    readout: bool = False

    @property
    def width_mult(self) -> float:
        """The multiplier of the parameter's main width dimension (``mup``'s ``width_mult``):
        the fan-in's when it is a width dimension, else the fan-out's."""
        return self.fan_in_mult if self.kind in ("hidden", "output") else self.fan_out_mult

    def lr_scale(self, rule: OptimizerRule) -> float:
        """The factor µP applies to the base learning rate η for this parameter.

        Adam-like (entrywise-normalized updates): hidden η/m_in; output η/m_in for a plain
        Linear, η for a MuReadout (whose 1/m_in forward makes that the same update); input,
        vector, fixed η. SGD-like: hidden η·m_out/m_in; input and vector η·m; output η/m_in
        for a plain Linear, η·m_in for a MuReadout; fixed η.
        """
        if rule not in get_args(OptimizerRule):
            raise ValueError(f"optimizer rule must be 'adam' or 'sgd', got {rule!r}")
        adam = rule == "adam"
        if self.kind == "hidden":
            return 1 / self.fan_in_mult if adam else self.fan_out_mult / self.fan_in_mult
        if self.kind == "output" and not self.readout:
            return 1 / self.fan_in_mult
        if self.kind == "fixed" or adam:
            return 1.0
        return self.width_mult  # SGD: input, vector, MuReadout output


def _fans(module: nn.Module, name: str, param: Tensor) -> tuple[int, int] | None:
    """(fan-out dim, fan-in dim) indices of a weight, None for a vector-like parameter."""
    if param.dim() < 2:
        return None
    if isinstance(module, nn.Embedding) and name == "weight":
        return 1, 0  # (num_embeddings, dim): the one-hot input side is dim 0
    return 0, 1


def _owned_parameters(model: nn.Module):
    """(full name, owning module, local name, parameter), each parameter once."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            yield (f"{prefix}.{local}" if prefix else local), module, local, param


def base_shapes(base_model: nn.Module, delta_model: nn.Module | None = None,
                model: nn.Module | None = None) -> dict[str, tuple[int | None, ...]]:
    """Base shapes from a base model: a dimension is a width dimension when its size differs
    between ``base_model`` and ``delta_model`` (the same architecture at another width), or,
    without a delta model, between ``base_model`` and ``model``.

    This is ``mup``'s ``set_base_shapes(model, base, delta=...)`` rule: a dimension of equal
    size in the two models counts as finite, so pass a ``delta_model`` when the model has the
    base width itself (else its µP classes collapse to ``fixed``).

    Example:
        >>> shapes = base_shapes(nn.Linear(4, 8), model=nn.Linear(4, 32))
        >>> shapes["weight"], shapes["bias"]
        ((8, None), (8,))
    """
    other = delta_model if delta_model is not None else model
    if other is None:
        raise ValueError("base_shapes needs a delta_model or the model to compare with")
    base = dict(base_model.named_parameters())
    target = dict(other.named_parameters())
    if base.keys() != target.keys():
        raise ValueError(f"base and {'delta' if delta_model is not None else 'target'} models "
                         f"differ in parameters: {sorted(base.keys() ^ target.keys())[:5]}")
    shapes = {}
    for name, param in base.items():
        if param.dim() != target[name].dim():
            raise ValueError(f"{name}: {tuple(param.shape)} vs {tuple(target[name].shape)}")
        shapes[name] = tuple(
            b if b != t else None for b, t in zip(param.shape, target[name].shape, strict=True))
    return shapes


def mlp_base_shapes(model: nn.Module, base_width: int) -> dict[str, tuple[int | None, ...]]:
    """Base shapes of a chain of linear layers (heldout's MLP) whose every hidden width has
    base size ``base_width``: a hidden width ``h`` has multiplier ``h / base_width``.

    The model must be an ``nn.Sequential`` of ``nn.Linear`` layers (``TokenLinear`` included),
    normalization layers and parameter-free modules. The first layer's input and the last
    layer's output are not width dimensions (data and classes); every other Linear dimension,
    and each normalization layer's features, are. Assumption: the base model had all hidden
    widths equal to ``base_width``, so hidden widths (256, 512) over base 64 scale by 4 and 8.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 10))
        >>> mlp_base_shapes(net, 64)["0.weight"], mlp_base_shapes(net, 64)["2.weight"]
        ((64, None), (None, 64))
    """
    if base_width < 1:
        raise ValueError(f"base_width must be >= 1, got {base_width}")
    unsupported = TypeError(
        f"µP's base_width inference supports an nn.Sequential of Linear and normalization "
        f"layers (heldout's MLP), not {type(model).__name__}; call mup_param_groups / "
        "mup_init_ with base_shapes(base_model, model=model) instead"
    )
    if not isinstance(model, nn.Sequential):
        raise unsupported
    children = list(model.named_children())
    linear_names = [name for name, child in children if isinstance(child, nn.Linear)]
    if not linear_names:
        raise unsupported
    shapes: dict[str, tuple[int | None, ...]] = {}
    features: int | None = None  # the current feature dimension, None before the first layer

    def width(is_width: bool) -> int | None:
        return base_width if is_width else None

    for name, child in children:
        if isinstance(child, nn.Linear):
            if features is not None and child.in_features != features:
                raise ValueError(f"{name} takes {child.in_features} features after {features}")
            first, last = name == linear_names[0], name == linear_names[-1]
            shapes[f"{name}.weight"] = (width(not last), width(not first))
            if child.bias is not None:
                shapes[f"{name}.bias"] = (width(not last),)
            features = child.out_features
        elif isinstance(child, _BatchNorm | nn.LayerNorm | nn.GroupNorm):
            for local, _ in child.named_parameters():
                shapes[f"{name}.{local}"] = (base_width,)
        elif any(True for _ in child.parameters()):
            raise unsupported
    return shapes


def _as_base_shapes(model: nn.Module, base: nn.Module | BaseShapes) -> BaseShapes:
    return base_shapes(base, model=model) if isinstance(base, nn.Module) else base


def mup_parameters(model: nn.Module, base: nn.Module | BaseShapes) -> dict[str, MupParameter]:
    """Classify every parameter of ``model`` for µP against ``base`` (a base model, compared
    with ``model`` by :func:`base_shapes`, or base shapes) and compute its width multipliers.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        ...                     nn.Linear(256, 10))
        >>> info = mup_parameters(net, mlp_base_shapes(net, 64))
        >>> info["0.weight"].kind, info["2.weight"].kind, info["4.weight"].kind
        ('input', 'hidden', 'output')
        >>> info["2.weight"].fan_in_mult, info["0.bias"].kind
        (4.0, 'vector')

    References:
        Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer
        (arXiv:2203.03466), Table 3; github.com/microsoft/mup (``InfShape``).
    """
    shapes = _as_base_shapes(model, base)
    out = {}
    for name, module, local, param in _owned_parameters(model):
        if name not in shapes:
            raise KeyError(f"no base shape for parameter {name!r}")
        base_shape = tuple(shapes[name])
        if len(base_shape) != param.dim():
            raise ValueError(f"{name}: base shape {base_shape} vs shape {tuple(param.shape)}")
        mults = [size / b if b else 1.0 for size, b in zip(param.shape, base_shape, strict=True)]
        fans = _fans(module, local, param)
        if fans is None:
            out[name] = MupParameter("vector" if base_shape and base_shape[0] else "fixed",
                                     fan_out_mult=mults[0] if mults else 1.0)
            continue
        if any(base_shape[2:]):
            raise ValueError(f"{name}: only the first two dimensions may grow with width")
        out_dim, in_dim = fans
        grows_in, grows_out = bool(base_shape[in_dim]), bool(base_shape[out_dim])
        kind: MupKind = ("hidden" if grows_in and grows_out else "output" if grows_in
                         else "input" if grows_out else "fixed")
        fan_in = 1 if isinstance(module, nn.Embedding) else nn.init._calculate_fan_in_and_fan_out(
            param)[0]
        out[name] = MupParameter(kind, mults[in_dim], mults[out_dim], fan_in,
                                 readout=isinstance(module, MuReadout) and local == "weight")
    return out


def mup_split_param_groups(
    param_groups: Sequence[Mapping[str, Any]],
    model: nn.Module,
    base: nn.Module | BaseShapes,
    optimizer: OptimizerRule = "adam",
    decoupled_wd: bool = False,
) -> list[dict[str, Any]]:
    """Split each param group into groups of equal µP scaling and rescale their ``lr`` (and
    ``weight_decay``, by the inverse factor so lr·wd is unchanged, unless ``decoupled_wd``).

    Every other option of a group is kept; each new group also records ``mup_kind`` (the
    µP class of its parameters) and ``mup_lr_scale``. Groups come in the order of their
    first parameter, so the split is deterministic (a checkpointed optimizer loads back).
    """
    by_name = mup_parameters(model, base)
    info = {id(p): by_name[n] for n, p in model.named_parameters()}
    groups: list[dict[str, Any]] = []
    for group in param_groups:
        split: dict[tuple[str, float], dict[str, Any]] = {}
        for param in group["params"]:
            if id(param) not in info:
                raise ValueError("a parameter of the optimizer is not a parameter of the model")
            p_info = info[id(param)]
            scale = p_info.lr_scale(optimizer)
            key = (p_info.kind, scale)
            if key not in split:
                new = {k: v for k, v in group.items() if k != "params"}
                new.update(params=[], mup_kind=p_info.kind, mup_lr_scale=scale)
                if "lr" in new:
                    new["lr"] = group["lr"] * scale
                if "weight_decay" in new and not decoupled_wd:
                    new["weight_decay"] = group["weight_decay"] / scale
                split[key] = new
            split[key]["params"].append(param)
        groups.extend(split.values())
    return groups


def mup_param_groups(
    model: nn.Module,
    base: nn.Module | BaseShapes,
    lr: float,
    optimizer: OptimizerRule = "adam",
    weight_decay: float = 0.0,
    decoupled_wd: bool = False,
) -> list[dict[str, Any]]:
    """torch optimizer param groups with µP's per-layer learning rates for base rate ``lr``.

    With m the width multiplier (fan-in m_in, fan-out m_out), the rules of Tensor Programs V,
    Table 3, as the ``mup`` package implements them (MuAdam / MuSGD):

    ============  ==========  =================  ====================================
    class         Adam lr     SGD lr             examples
    ============  ==========  =================  ====================================
    input         lr          lr·m_out           first layer, embeddings
    hidden        lr/m_in     lr·m_out/m_in      hidden-to-hidden weights
    output        lr/m_in     lr/m_in            readout weight, plain ``nn.Linear``
    output (Mu)   lr          lr·m_in            readout weight of a :class:`MuReadout`
    vector        lr          lr·m               biases and gains of width dimensions
    fixed         lr          lr                 no width dimension (output bias)
    ============  ==========  =================  ====================================

    A MuReadout divides its input by m_in, so its rows lr (Adam) and lr·m_in (SGD) move the
    effective weight W/m_in exactly as lr/m_in moves a plain readout. ``weight_decay`` is
    divided by the same factor (``mup``'s rule) unless ``decoupled_wd``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 10))
        >>> groups = mup_param_groups(net, mlp_base_shapes(net, 64), lr=0.1)
        >>> [(g["mup_kind"], g["lr"]) for g in groups]
        [('input', 0.1), ('vector', 0.1), ('output', 0.025), ('fixed', 0.1)]
        >>> optimizer = torch.optim.Adam(groups)

    References:
        Tensor Programs V (arXiv:2203.03466), Table 3; github.com/microsoft/mup ``mup/optim.py``.
    """
    group = {"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay}
    return mup_split_param_groups([group], model, base, optimizer, decoupled_wd)


@torch.no_grad()
def mup_init_(
    model: nn.Module,
    base: nn.Module | BaseShapes,
    init_std: float = 1.0,
    readout_zero_init: bool = False,
) -> nn.Module:
    """Re-initialize ``model`` in place with µP's scales; return it.

    With σ = ``init_std``: every weight of a ``Linear``/``Conv``/``Embedding`` is drawn from
    N(0, σ²/fan_in) (fan_in = 1 for an embedding's one-hot input), except output weights
    (fan-in grows with width): N(0, σ²/base_fan_in) for a :class:`MuReadout` (its 1/m forward
    makes the effective std σ·√base_fan_in/fan_in ∝ 1/fan_in) and N(0, σ²·base_fan_in/fan_in²)
    for a plain ``nn.Linear``; zero when ``readout_zero_init``. Biases of those layers become 0
    (a width-independent constant). Other parameters (LayerNorm, BatchNorm) keep their
    width-independent initialization. At the base width this is the standard parametrization
    N(0, σ²/fan_in).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256))
        >>> _ = mup_init_(net, {"0.weight": (64, None), "0.bias": (64,),
        ...                     "2.weight": (64, 64), "2.bias": (64,)})

    References:
        Tensor Programs V (arXiv:2203.03466), Table 3; github.com/microsoft/mup ``mup/init.py``,
        ``MuReadout._rescale_parameters``.
    """
    if init_std <= 0:
        raise ValueError(f"init_std must be > 0, got {init_std}")
    info = mup_parameters(model, base)
    for name, module, local, param in _owned_parameters(model):
        if not isinstance(module, nn.Linear | _ConvNd | nn.Embedding):
            continue
        if local == "bias":
            param.zero_()
            continue
        if local != "weight":
            continue
        p_info = info[name]
        std = init_std / math.sqrt(p_info.fan_in)
        if p_info.kind == "output":
            if readout_zero_init:
                param.zero_()
                continue
            std *= math.sqrt(p_info.fan_in_mult)  # σ/√base_fan_in
            if not p_info.readout:
                std /= p_info.fan_in_mult  # the MuReadout's 1/m folded into the weight
        param.normal_(0.0, std)
    return model


class MuReadout(nn.Linear):
    """A readout ``nn.Linear`` whose input is multiplied by ``output_mult / width_mult``:
    ``y = W (α x / m) + b`` with m the fan-in width multiplier (µP's 1/width readout).

    Built from an existing layer by :meth:`from_linear`, sharing its parameters (an optimizer
    that holds them keeps working, and the parameter names do not change).

    Example:
        >>> head = MuReadout.from_linear(nn.Linear(4, 2), width_mult=4.0)
        >>> x = torch.ones(1, 4)
        >>> torch.allclose(head(x), F.linear(x / 4, head.weight, head.bias))
        True

    References:
        Tensor Programs V (arXiv:2203.03466); github.com/microsoft/mup ``mup/layer.py``.
    """

    width_mult: float
    output_mult: float

    @classmethod
    def from_linear(cls, linear: nn.Linear, width_mult: float,
                    output_mult: float = 1.0) -> MuReadout:
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        readout = cls.__new__(cls)
        nn.Module.__init__(readout)
        readout.in_features, readout.out_features = linear.in_features, linear.out_features
        readout.register_parameter("weight", cast(nn.Parameter, linear.weight))
        readout.register_parameter("bias", linear.bias)
        readout.width_mult, readout.output_mult = float(width_mult), float(output_mult)
        return readout

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input * (self.output_mult / self.width_mult), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, width_mult={self.width_mult}, " \
               f"output_mult={self.output_mult}"


def mu_readout(model: nn.Module, base: nn.Module | BaseShapes,
               output_mult: float = 1.0) -> int:
    """Replace, in place, every ``nn.Linear`` whose weight is an output weight (fan-in grows
    with width, fan-out does not) by a :class:`MuReadout` with its fan-in multiplier and
    ``output_mult``; return how many readouts there are (already-converted ones are updated).
    """
    info = mup_parameters(model, base)
    count = 0
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if not isinstance(child, nn.Linear) or info[f"{full}.weight"].kind != "output":
                continue
            mult = info[f"{full}.weight"].fan_in_mult
            if isinstance(child, MuReadout):
                child.width_mult, child.output_mult = mult, float(output_mult)
            else:
                setattr(parent, name, MuReadout.from_linear(child, mult, output_mult))
            count += 1
    return count


def _optimizer_rule(optimizer: torch.optim.Optimizer) -> OptimizerRule:
    if isinstance(optimizer, torch.optim.SGD | torch.optim.ASGD):
        return "sgd"
    adam_like = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
                 torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad)
    if isinstance(optimizer, adam_like):
        return "adam"
    raise TypeError(f"mup: cannot tell whether {type(optimizer).__name__} is Adam-like or "
                    "SGD-like; set optimizer_rule to 'adam' or 'sgd'")


@TECHNIQUES.register(
    "mup",
    summary="Maximal Update Parametrization: µP init, 1/width readout and per-layer lr.",
    papers=(54,),
    references=("Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter "
                "Transfer (arXiv:2203.03466)",),
    search_space={"output_mult": ("log_uniform", 0.25, 16.0),
                  "init_std": ("log_uniform", 0.25, 4.0)},
)
@dataclass
class MuP(Technique):
    """µP for heldout's MLP: widths scale from ``base_width`` (every hidden width h has
    multiplier h / ``base_width``; the input and output dimensions are fixed, see
    :func:`mlp_base_shapes`).

    ``transform_model`` turns the head into a :class:`MuReadout` (×``output_mult``/m) and
    re-initializes with :func:`mup_init_`; ``wrap_optimizer`` splits the base optimizer's
    param groups in place and scales their learning rates per µP class
    (:func:`mup_param_groups`' table; ``optimizer_rule="auto"`` reads Adam-like or SGD-like
    from the optimizer). Tune lr, ``init_std`` and ``output_mult`` at the base width, then
    reuse them at any width. For other models, use the functions with a base model.
    """

    base_width: Annotated[int, Ge(1)] = 64  # the hidden width the hyper-parameters were tuned at
    optimizer_rule: Literal["auto", "adam", "sgd"] = "auto"  # µP lr table to apply
    # σ: weights ~ N(0, σ²/fan_in) (readout: σ²/base_fan_in, ×1/m)
    init_std: Annotated[float, Gt(0)] = 1.0
    output_mult: Annotated[float, Gt(0)] = 1.0  # α: the readout computes W (α x / m) + b
    readout_zero_init: bool = False  # start the readout weight at zero (TP5's suggestion)
    decoupled_wd: bool = False  # leave weight decay unscaled (else wd divided by the lr factor)

    touches = frozenset({"model", "optimizer"})

    def __post_init__(self) -> None:
        if self.optimizer_rule not in ("auto", "adam", "sgd"):
            raise ValueError(f"optimizer_rule must be auto, adam or sgd, "
                             f"got {self.optimizer_rule!r}")

    def transform_model(self, model: nn.Module) -> nn.Module:
        shapes = mlp_base_shapes(model, self.base_width)
        if mu_readout(model, shapes, self.output_mult) == 0:
            raise ValueError("mup: the model has no readout layer whose fan-in is a width "
                             "(an MLP needs at least one hidden layer)")
        return mup_init_(model, shapes, self.init_std, self.readout_zero_init)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        rule = _optimizer_rule(optimizer) if self.optimizer_rule == "auto" else \
            self.optimizer_rule
        groups = mup_split_param_groups(optimizer.param_groups, model,
                                        mlp_base_shapes(model, self.base_width), rule,
                                        self.decoupled_wd)
        optimizer.param_groups.clear()  # state is keyed by parameter: it stays valid
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer
