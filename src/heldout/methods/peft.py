"""Parameter-efficient fine-tuning of a pre-trained text encoder: LoRA (through the ``peft``
library) and the LoRA-shaped methods PEGO, SoMA, SaRA and LEVI.

Every technique here acts in ``transform_model`` on a
:class:`heldout.models.pretrained.PretrainedTextClassifier` (``minilm`` or ``tiny_bert``): it
replaces or wraps the encoder's targeted ``nn.Linear`` layers (``target_modules``: suffixes of
the module names, as in ``peft``; the attention ``query`` and ``value`` by default) and freezes
the rest of the encoder; the classification ``head`` always trains. The math is in plain
functions (:func:`pego_orthogonality`, :func:`svd_split`, :func:`smallest_magnitude_indices`,
:func:`nuclear_norm`) and small modules usable in any loop.

The papers adapt vision transformers (PEGO, SoMA), a diffusion UNet (SaRA) or language and
vision models (LEVI); here they adapt MiniLM on a text topic task, a stand-in stated in each
docstring.

References:
    Hu et al. LoRA: Low-Rank Adaptation of Large Language Models. arXiv:2106.09685.
    Hu et al. Learn to Preserve and Diversify: Parameter-Efficient Group with Orthogonal
    Regularization for Domain Generalization (PEGO). arXiv:2407.15085.
    Yun et al. SoMA: Singular Value Decomposed Minor Components Adaptation for Domain
    Generalizable Representation Learning. arXiv:2412.04077.
    Chen et al. SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse
    Low-Rank Adaptation. arXiv:2409.06633.
    Roh et al. LEVI: Generalizable Fine-tuning via Layer-wise Ensemble of Different Views.
    arXiv:2402.04644.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core import State, Technique
from heldout.core.bounds import Annotated, Ge, Interval
from heldout.registry import TECHNIQUES

__all__ = ["LEVI", "PEGO", "SaRA", "SoMA", "LEVIClassifier", "LoRA", "LoRAGroupLinear",
           "SVDMinorLinear", "SparseDeltaLinear", "nuclear_norm", "pego_orthogonality",
           "smallest_magnitude_indices", "svd_split", "target_linears",
           "trainable_parameter_count"]

_TARGETS = ("query", "value")
_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def trainable_parameter_count(model: nn.Module) -> int:
    """The number of scalars that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _encoder(model: nn.Module, technique: str) -> Any:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(model, "head"):
        raise TypeError(f"{technique} adapts a pre-trained text classifier (model=minilm or "
                        f"model=tiny_bert, with .encoder and .head); got {type(model).__name__}")
    return encoder


def _check_targets(target_modules: tuple[str, ...]) -> None:
    if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
        raise ValueError(f"target_modules must be a non-empty tuple of module-name suffixes, "
                         f"got {target_modules!r}")


def target_linears(encoder: nn.Module, target_modules: tuple[str, ...] = _TARGETS,
                   frozen_blocks: int = 0) -> list[tuple[str, nn.Linear]]:
    """The encoder's ``nn.Linear`` layers whose name ends with one of ``target_modules``,
    skipping those of the first ``frozen_blocks`` transformer blocks (``layer.<i>.``)."""
    _check_targets(target_modules)
    found = []
    for name, module in encoder.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        block = _LAYER.search(name)
        if block is not None and int(block.group(1)) < frozen_blocks:
            continue
        found.append((name, module))
    if not found:
        raise ValueError(f"target_modules {target_modules!r} match no nn.Linear of the encoder "
                         f"(after freezing {frozen_blocks} blocks)")
    return found


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def _adapt(model: nn.Module, technique: str, target_modules: tuple[str, ...],
           make: Any, frozen_blocks: int = 0) -> nn.Module:
    """Freeze the encoder and put ``make(linear)`` in place of each targeted linear."""
    encoder = _encoder(model, technique)
    targets = target_linears(encoder, target_modules, frozen_blocks)
    _freeze(encoder)
    for name, linear in targets:
        _replace(encoder, name, make(linear))
    return model


def _modules(model: nn.Module, kind: type) -> Iterator[Any]:
    return (m for m in model.modules() if isinstance(m, kind))


# --------------------------------------------------------------------------------- LoRA


@TECHNIQUES.register(
    "lora",
    summary="LoRA through the peft library: low-rank updates B·A (B = 0 at init) on the "
    "encoder's targeted linears; only they and the head train.",
    search_space={"rank": ("choice", [4, 8, 16]), "alpha": ("choice", [8, 16, 32])},
    references=("LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)",),
)
@dataclass
class LoRA(Technique):
    """W x + (alpha / rank) · B A x on each targeted linear of the encoder, injected with
    ``peft.inject_adapter_in_model``; A is Kaiming-uniform, B = 0, so the adapted model equals
    the pre-trained one at initialization. The encoder's own weights are frozen."""

    rank: Annotated[int, Ge(1)] = 8  # r
    alpha: Annotated[int, Ge(1)] = 16  # the update is scaled by alpha / rank
    dropout: Annotated[float, Interval(0.0, 1.0, closed="left")] = 0.0  # on the LoRA input
    target_modules: tuple[str, ...] = _TARGETS  # suffixes of the adapted linears' names

    touches = frozenset({"model"})

    def __post_init__(self) -> None:
        _check_targets(self.target_modules)

    def transform_model(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        encoder = _encoder(model, "lora")
        target_linears(encoder, self.target_modules)  # a clear error when none match
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=list(self.target_modules), bias="none")
        adapted = inject_adapter_in_model(config, encoder)
        for name, parameter in adapted.named_parameters():
            parameter.requires_grad_("lora_" in name)
        model.encoder = adapted
        return model


# --------------------------------------------------------------------------------- PEGO


def pego_orthogonality(down: Tensor, pretrained: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
    """PEGO's two orthogonality terms for one targeted weight.

    ``down`` holds the group's LoRA down-projections A_1..A_n, shape ``(n, r, in)``;
    ``pretrained`` the frozen weight W_0, shape ``(out, in)``. Returns
    ``(Σ_{i<j} ‖A_i A_jᵀ‖²_F, Σ_i ‖W_0 A_iᵀ‖²_F)``: the first pushes the members of the group
    to read different input directions (diversify), the second pushes each member away from
    the directions the pre-trained weight reads (preserve). The second is 0 without
    ``pretrained``.

    Example:
        >>> a = torch.eye(4).reshape(2, 2, 4)  # two members reading disjoint coordinates
        >>> [float(t) for t in pego_orthogonality(a, torch.zeros(3, 4))]
        [0.0, 0.0]
    """
    if down.dim() != 3:
        raise ValueError(f"down must have shape (group, rank, in), got {tuple(down.shape)}")
    gram = torch.einsum("irk,jsk->ijrs", down, down)  # every A_i A_jᵀ
    squared = gram.pow(2).sum(dim=(2, 3))
    among = torch.triu(squared, diagonal=1).sum()
    if pretrained is None:
        return among, down.new_zeros(())
    if pretrained.shape[-1] != down.shape[-1]:
        raise ValueError(f"pretrained has {pretrained.shape[-1]} inputs, the LoRA factors "
                         f"{down.shape[-1]}")
    against = torch.einsum("ok,irk->ior", pretrained, down).pow(2).sum()
    return among, against


class LoRAGroupLinear(nn.Module):
    """A frozen linear plus a group of ``group_size`` LoRA modules:
    ``W_0 x + b + (alpha / rank) Σ_i B_i A_i dropout(x)`` (A Kaiming-uniform, B = 0)."""

    def __init__(self, base: nn.Linear, group_size: int, rank: int, alpha: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        _freeze(base)
        self.scale = alpha / rank
        self.down = nn.Parameter(torch.empty(group_size, rank, base.in_features))
        self.up = nn.Parameter(torch.zeros(group_size, base.out_features, rank))
        for member in self.down:  # LoRA's (and peft's) initialization of A
            nn.init.kaiming_uniform_(member, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def delta(self) -> Tensor:
        """Σ_i B_i A_i, the group's update of the weight, shape ``(out, in)``."""
        return torch.einsum("nor,nri->oi", self.up, self.down)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.einsum("...i,nri->...nr", self.dropout(x), self.down)
        update = torch.einsum("...nr,nor->...o", hidden, self.up)
        return self.base(x) + self.scale * update


@TECHNIQUES.register(
    "pego",
    summary="PEGO: a group of LoRA modules per targeted weight, with an orthogonality loss "
    "among them and against the pre-trained weight.",
    papers=(34,),
    search_space={"orthogonality": ("log_uniform", 1e-3, 1.0),
                  "pretrained_orthogonality": ("log_uniform", 1e-4, 1e-1),
                  "group_size": ("choice", [2, 4, 8])},
    references=("Learn to Preserve and Diversify: Parameter-Efficient Group with Orthogonal "
                "Regularization for Domain Generalization (arXiv:2407.15085)",),
)
@dataclass
class PEGO(Technique):
    """Parameter-Efficient Group with Orthogonal regularization: ``group_size`` LoRA modules on
    each targeted linear (:class:`LoRAGroupLinear`) and the loss term
    ``orthogonality · mean Σ_{i<j}‖A_iA_jᵀ‖²_F + pretrained_orthogonality · mean Σ_i‖W_0A_iᵀ‖²_F``
    over the targeted weights (:func:`pego_orthogonality`). The paper adapts a ViT's attention;
    here the text encoder's ``query``/``value``. With ``group_size=1`` and both weights 0 it is
    LoRA."""

    group_size: Annotated[int, Ge(1)] = 4  # LoRA modules per targeted weight
    rank: Annotated[int, Ge(1)] = 8  # rank of each module
    alpha: Annotated[int, Ge(1)] = 16  # each module's update is scaled by alpha / rank
    dropout: Annotated[float, Interval(0.0, 1.0, closed="left")] = 0.0
    orthogonality: Annotated[float, Ge(0.0)] = 0.1  # weight of the among-group term
    pretrained_orthogonality: Annotated[float, Ge(0.0)] = 0.01  # weight of the W_0 term
    target_modules: tuple[str, ...] = _TARGETS

    touches = frozenset({"model", "loss_term"})

    def __post_init__(self) -> None:
        _check_targets(self.target_modules)

    def transform_model(self, model: nn.Module) -> nn.Module:
        return _adapt(model, "pego", self.target_modules, lambda linear: LoRAGroupLinear(
            linear, self.group_size, self.rank, self.alpha, self.dropout))

    def regularizer(self, model: nn.Module) -> Tensor:
        terms = [torch.stack(pego_orthogonality(m.down, m.base.weight))
                 for m in _modules(model, LoRAGroupLinear)]
        among, against = torch.stack(terms).mean(0)
        return self.orthogonality * among + self.pretrained_orthogonality * against

    def loss_term(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        return self.regularizer(state.model)


# --------------------------------------------------------------------------------- SoMA


def svd_split(weight: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split ``weight = residual + U_r diag(s_r) V_rᵀ`` where ``(U_r, s_r, V_rᵀ)`` are the
    ``rank`` *smallest* singular components; returns ``(residual, U_r, s_r, V_rᵀ)``. The SVD
    runs in float64 so the split reconstructs ``weight`` to float precision.

    Example:
        >>> w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> residual, u, s, vt = svd_split(w, 1)
        >>> s.tolist(), torch.diagonal(residual).tolist()
        ([1.0], [3.0, 2.0, 0.0])
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a matrix, got shape {tuple(weight.shape)}")
    if not 1 <= rank <= min(weight.shape):
        raise ValueError(f"rank must be in [1, {min(weight.shape)}], got {rank}")
    u, s, vt = torch.linalg.svd(weight.double(), full_matrices=False)
    u, s, vt = u[:, -rank:], s[-rank:], vt[-rank:]
    residual = weight.double() - (u * s) @ vt
    return (residual.to(weight.dtype), u.to(weight.dtype), s.to(weight.dtype),
            vt.to(weight.dtype))


class SVDMinorLinear(nn.Module):
    """``x (R + U diag(s) Vᵀ)ᵀ + b``: the frozen major part R of a pre-trained weight and its
    ``rank`` minor singular components (U, s, Vᵀ), which train."""

    residual: Tensor

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        residual, u, s, vt = svd_split(base.weight.detach(), rank)
        self.register_buffer("residual", residual)
        self.u, self.s, self.vt = nn.Parameter(u), nn.Parameter(s), nn.Parameter(vt)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(),
                                                               requires_grad=False)

    @property
    def weight(self) -> Tensor:
        return self.residual + (self.u * self.s) @ self.vt

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


@TECHNIQUES.register(
    "soma",
    summary="SoMA: fine-tune only the minor singular components of each targeted weight "
    "(SVD split), freeze the first blocks, anneal weight decay.",
    papers=(23,),
    search_space={"rank": ("choice", [4, 8, 16]), "frozen_blocks": ("int_uniform", 0, 3),
                  "weight_decay": ("log_uniform", 1e-5, 1e-2)},
    references=("SoMA: Singular Value Decomposed Minor Components Adaptation for Domain "
                "Generalizable Representation Learning (arXiv:2412.04077)",),
)
@dataclass
class SoMA(Technique):
    """Singular Value Decomposed Minor Components Adaptation: each targeted weight of blocks
    ``frozen_blocks`` and above becomes :class:`SVDMinorLinear` (its ``rank`` smallest singular
    components train, the residual stays frozen); the first ``frozen_blocks`` blocks stay
    frozen whole. Annealed weight decay: after each step the minor factors shrink by
    ``weight_decay · (1 − t / T)`` (decoupled, annealed linearly to 0 over the run); the
    paper's exact annealing schedule is not in its abstract, this linear one is a stand-in.
    The paper adapts a ViT for segmentation/detection; here the text encoder."""

    rank: Annotated[int, Ge(1)] = 8  # minor components per weight
    frozen_blocks: Annotated[int, Ge(0)] = 1  # the first blocks, kept frozen
    weight_decay: Annotated[float, Interval(0.0, 1.0, closed="left")] = 1e-4  # at step 0
    target_modules: tuple[str, ...] = ("query", "key", "value", "attention.output.dense")

    touches = frozenset({"model", "after_step"})

    def __post_init__(self) -> None:
        _check_targets(self.target_modules)

    def transform_model(self, model: nn.Module) -> nn.Module:
        return _adapt(model, "soma", self.target_modules,
                      lambda linear: SVDMinorLinear(linear, self.rank), self.frozen_blocks)

    @torch.no_grad()
    def on_after_step(self, state: State) -> None:
        decay = self.weight_decay * max(0.0, 1.0 - state.step / max(1, state.max_steps))
        for module in _modules(state.model, SVDMinorLinear):
            for parameter in (module.u, module.s, module.vt):
                parameter.mul_(1.0 - decay)


# --------------------------------------------------------------------------------- SaRA


def smallest_magnitude_indices(weight: Tensor, fraction: float) -> Tensor:
    """Flat indices (sorted) of the ``round(fraction · numel)`` entries of smallest |w|
    (ties broken by position).

    Example:
        >>> smallest_magnitude_indices(torch.tensor([[0.5, -0.1], [2.0, 0.05]]), 0.5).tolist()
        [1, 3]
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = weight.detach().abs().flatten()
    count = max(1, round(fraction * flat.numel()))
    order = torch.sort(flat, stable=True).indices
    return torch.sort(order[:count]).values


def nuclear_norm(matrix: Tensor) -> Tensor:
    """‖M‖_* = Σ σ_i(M), the sum of singular values (differentiable).

    Example:
        >>> float(nuclear_norm(torch.tensor([[3.0, 0.0], [0.0, -4.0]])))
        7.0
    """
    return torch.linalg.matrix_norm(matrix, ord="nuc")


class SparseDeltaLinear(nn.Module):
    """A frozen linear whose weight gets a sparse trainable update at fixed positions:
    ``W + scatter(indices, values)``, stored compactly as ``indices`` (buffer) and
    ``values`` (parameter, zero at init)."""

    indices: Tensor

    def __init__(self, base: nn.Linear, fraction: float) -> None:
        super().__init__()
        self.base = base
        _freeze(base)
        self.register_buffer("indices", smallest_magnitude_indices(base.weight, fraction))
        self.values = nn.Parameter(torch.zeros(len(self.indices), dtype=base.weight.dtype))

    def delta(self) -> Tensor:
        """The dense update ΔW, shape of the weight."""
        flat = self.values.new_zeros(self.base.weight.numel()).index_add(0, self.indices,
                                                                         self.values)
        return flat.view_as(self.base.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.base.weight + self.delta(), self.base.bias)


@TECHNIQUES.register(
    "sara",
    summary="SaRA: fine-tune only the smallest-magnitude pre-trained weights (a fraction), "
    "sparse update stored as indices + values, nuclear-norm penalty on the update.",
    papers=(49,),
    search_space={"fraction": ("choice", [0.02, 0.05, 0.1, 0.2]),
                  "nuclear": ("log_uniform", 1e-4, 1e-1)},
    references=("SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse "
                "Low-Rank Adaptation (arXiv:2409.06633)",),
)
@dataclass
class SaRA(Technique):
    """Sparse low-rank adaptation: in each targeted weight the ``fraction`` of entries of
    smallest |w| (the paper: the smallest 10–20 % do not matter to the pre-trained model) train
    (:class:`SparseDeltaLinear`), every other weight of the encoder is frozen, and the loss
    gets ``nuclear · mean ‖ΔW‖_*`` over the targeted weights, the paper's low-rank
    constraint. Not reproduced: the progressive re-selection of parameters and the
    memory-saving unstructured backward pass (a diffusion UNet in the paper; here the text
    encoder)."""

    fraction: Annotated[float, Interval(0.0, 1.0, closed="right")] = 0.1
    nuclear: Annotated[float, Ge(0.0)] = 0.01  # weight of the nuclear-norm term
    target_modules: tuple[str, ...] = _TARGETS

    touches = frozenset({"model", "loss_term"})

    def __post_init__(self) -> None:
        _check_targets(self.target_modules)

    def transform_model(self, model: nn.Module) -> nn.Module:
        return _adapt(model, "sara", self.target_modules,
                      lambda linear: SparseDeltaLinear(linear, self.fraction))

    def loss_term(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        norms = [nuclear_norm(m.delta()) for m in _modules(state.model, SparseDeltaLinear)]
        return self.nuclear * torch.stack(norms).mean()


# --------------------------------------------------------------------------------- LEVI


class LEVIClassifier(nn.Module):
    """The pre-trained classifier ensembled with a small model trained from scratch.

    Pre-trained view: ``Σ_l a_l · meanpool(h_l)`` over the encoder's hidden states
    ``h_0..h_L`` (embeddings and every block) with learned layer weights ``a`` (initialized
    to the last layer only), read by the pre-trained classifier's ``head``. Small view: a
    from-scratch token embedding, mean pooling and a two-layer MLP giving its own logits.
    Logits: ``head(view) + gate · small(x)``, ``gate`` learned, starting at ``small_weight``.
    With ``gate = 0`` and the initial layer weights it is the pre-trained classifier."""

    base: Any  # the PretrainedTextClassifier
    head: Any

    def __init__(self, base: Any, num_classes: int, vocab: int, width: int,
                 small_weight: float) -> None:
        super().__init__()
        self.base = base
        self.head = base.head
        layers = int(base.encoder.config.num_hidden_layers) + 1
        self.layer_weights = nn.Parameter(F.one_hot(torch.tensor(layers - 1), layers).float())
        self.small_embedding = nn.Embedding(vocab, width, padding_idx=0)
        self.small = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                   nn.Linear(width, num_classes))
        self.gate = nn.Parameter(torch.tensor(float(small_weight)))

    def features(self, input_ids: Tensor) -> Tensor:
        input_ids = input_ids.long()
        mask = (input_ids != 0).long()
        out = self.base.encoder(input_ids=input_ids, attention_mask=mask,
                                output_hidden_states=True)
        weights = mask.unsqueeze(-1).float()
        pooled = torch.stack([(h * weights).sum(1) / weights.sum(1).clamp_min(1.0)
                              for h in out.hidden_states], dim=0)
        return torch.einsum("l,lnh->nh", self.layer_weights, pooled)

    def small_logits(self, input_ids: Tensor) -> Tensor:
        input_ids = input_ids.long()
        weights = (input_ids != 0).unsqueeze(-1).float()
        embedded = (self.small_embedding(input_ids) * weights).sum(1)
        return self.small(embedded / weights.sum(1).clamp_min(1.0))

    def forward(self, input_ids: Tensor) -> Tensor:
        pretrained = self.head(self.base.dropout(self.features(input_ids)))
        return pretrained + self.gate * self.small_logits(input_ids)


@TECHNIQUES.register(
    "levi",
    summary="LEVI: layer-wise ensemble of the pre-trained model (learned weights over its "
    "layers' pooled features) with a small task model trained from scratch.",
    papers=(66,),
    search_space={"width": ("choice", [32, 64, 128]), "small_weight": ("choice", [0.0, 0.5])},
    references=("LEVI: Generalizable Fine-tuning via Layer-wise Ensemble of Different Views "
                "(arXiv:2402.04644)",),
)
@dataclass
class LEVI(Technique):
    """Wrap the pre-trained classifier in :class:`LEVIClassifier`. The pre-trained encoder
    trains as the model's ``mode`` says (``frozen``: only the layer weights, the head and the
    small model). The paper ensembles large language/vision models with a small model layer by
    layer; here the pooled features of every MiniLM layer and a bag-of-embeddings MLP."""

    width: Annotated[int, Ge(1)] = 64  # the small model's embedding and hidden width
    small_weight: float = 0.0  # the gate on the small model's logits at initialization

    touches = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        encoder = _encoder(model, "levi")
        head = model.head
        if not isinstance(head, nn.Linear):
            raise TypeError(f"levi needs a linear head, got {type(head).__name__}")
        vocab = int(encoder.config.vocab_size)
        return LEVIClassifier(model, head.out_features, vocab, self.width, self.small_weight)
