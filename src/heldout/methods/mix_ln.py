"""Mix-LN (#36): Post-LN in the shallowest transformer blocks, Pre-LN in the deeper ones.

The paper argues with per-layer gradient norms; :class:`MixLN` logs them through the
``grad_norm_report`` callback's logic, and the callback gives the Pre-LN baseline the same report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from heldout.callbacks.grad_norms import GradNormReport
from heldout.core.bounds import Annotated, Interval
from heldout.core.technique import Technique
from heldout.models.transformer import Norm, TransformerBlock
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = ["MixLN", "apply_mix_ln", "mix_ln_norms"]


def mix_ln_norms(n_layers: int, post_ln_ratio: float = 0.25) -> tuple[Norm, ...]:
    """The LayerNorm placement of each block under Mix-LN: ``"post"`` for the first
    ⌊α·L⌋ blocks (α = ``post_ln_ratio``, L = ``n_layers``), ``"pre"`` for the rest.

    The official code takes the number of Post-LN layers as an integer (``POST_NUM``: 3 of 12,
    6 of 24, i.e. α = 0.25); for an α·L that is not an integer we round down, so α < 1/L gives
    a plain Pre-LN stack and α = 1 a plain Post-LN one.

    Example:
        >>> mix_ln_norms(8)
        ('post', 'post', 'pre', 'pre', 'pre', 'pre', 'pre', 'pre')

    References:
        Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and Post-LN
        (arXiv:2412.13795); code github.com/pixeli99/MixLN (``NORM_TYPE=post_pre``).
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if not 0.0 <= post_ln_ratio <= 1.0:
        raise ValueError(f"post_ln_ratio must be in [0, 1], got {post_ln_ratio}")
    n_post = math.floor(post_ln_ratio * n_layers + 1e-9)  # 0.29·100 is 28.999… in floats
    post: tuple[Norm] = ("post",)
    pre: tuple[Norm] = ("pre",)
    return post * n_post + pre * (n_layers - n_post)


def apply_mix_ln(model: nn.Module, post_ln_ratio: float = 0.25) -> nn.Module:
    """Set, in place, each block's ``norm`` of a heldout transformer to :func:`mix_ln_norms`;
    return the model.

    The network keeps a final LayerNorm before the head exactly when its last block is Pre-LN
    (as :class:`~heldout.models.transformer.TransformerNetwork` builds it), so the final norm is
    added or removed when the last block changes placement: build the optimizer afterwards.
    Block parameters are untouched (both placements hold the same modules).

    Example:
        >>> from heldout.models.transformer import Transformer
        >>> from heldout.tasks.base import InputSpec
        >>> net = Transformer(d_model=8, n_heads=2, n_layers=4).build(
        ...     InputSpec("tokens", (2,), vocab=5), num_classes=5)
        >>> [block.norm for block in apply_mix_ln(net, 0.25).blocks]
        ['post', 'pre', 'pre', 'pre']
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not blocks or not all(
        isinstance(block, TransformerBlock) for block in blocks
    ):
        raise TypeError(
            f"Mix-LN needs a transformer whose `.blocks` are heldout TransformerBlocks; "
            f"{type(model).__name__} has none (use model=transformer)"
        )
    layers = cast(list[TransformerBlock], list(blocks))  # checked just above
    norms = mix_ln_norms(len(layers), post_ln_ratio)
    for block, norm in zip(layers, norms, strict=True):
        block.norm = norm
    if hasattr(model, "final_norm"):
        last = layers[-1].attention_norm
        if norms[-1] == "pre" and not isinstance(model.final_norm, nn.LayerNorm):
            model.final_norm = nn.LayerNorm(
                last.normalized_shape, eps=last.eps,
                device=last.weight.device, dtype=last.weight.dtype,
            )
        elif norms[-1] == "post" and not isinstance(model.final_norm, nn.Identity):
            model.final_norm = nn.Identity()
    return model


@TECHNIQUES.register(
    "mix_ln",
    summary="Mix-LN: Post-LN in the first blocks, Pre-LN in the deeper ones; logs grad norms.",
    papers=(36,),
    search_space={"post_ln_ratio": ("choice", [0.125, 0.25, 0.5])},
)
@dataclass
class MixLN(Technique):
    """Model transform :func:`apply_mix_ln` on a heldout transformer (``model=transformer``),
    plus, when ``report_grad_norms``, the per-block gradient-norm report of the
    :class:`~heldout.callbacks.GradNormReport` callback (``grad_norm/block<i>`` at every
    evaluation), the diagnostic the paper argues with."""

    # α: the first ⌊α·L⌋ of L blocks are Post-LN (paper: 0.25)
    post_ln_ratio: Annotated[float, Interval(0, 1)] = 0.25
    report_grad_norms: bool = True  # log grad_norm/block<i> at each evaluation
    _report: GradNormReport = field(default_factory=GradNormReport, init=False, repr=False)

    touches = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        return apply_mix_ln(model, self.post_ln_ratio)

    def on_after_backward(self, state: State) -> None:
        if self.report_grad_norms:
            self._report.on_after_backward(state)

    def on_eval(self, state: State, metrics: dict[str, float]) -> None:
        self._report.on_eval(state, metrics)

    def state_dict(self) -> dict[str, Any]:
        return self._report.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._report.load_state_dict(state)
