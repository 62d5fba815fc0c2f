"""Ghost Batch Normalization (#3) as a layer and as a model transform."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from heldout.core.bounds import Annotated, Ge
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = ["GhostBN", "GhostBatchNorm", "ghost_batch_norm"]


class GhostBatchNorm(_BatchNorm):
    """BatchNorm that, in training, normalizes each chunk of ``ghost_batch_size`` examples with
    that chunk's own mean and variance, and updates the running statistics once per chunk.

    In evaluation it is plain BatchNorm with the running statistics. Any input of dimension
    2 to 5 is accepted (the batch is dimension 0). A last chunk that would hold one value per
    channel (one example of a 2-D input) joins the chunk before it.

    References:
        Train longer, generalize better: closing the generalization gap in large batch
        training of neural networks (arXiv:1705.08741), section 4.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 128, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def _check_input_dim(self, input: Tensor) -> None:
        if not 2 <= input.dim() <= 5:
            raise ValueError(f"expected a 2-D to 5-D input, got {input.dim()}-D")

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, ghost_batch_size: int) -> GhostBatchNorm:
        """A GhostBatchNorm that shares ``bn``'s parameters and buffers (the optimizer that
        holds ``bn``'s parameters keeps working)."""
        ghost = cls.__new__(cls)
        nn.Module.__init__(ghost)
        ghost.__dict__.update({k: v for k, v in bn.__dict__.items() if not k.startswith("_")})
        ghost._parameters = bn._parameters
        ghost._buffers = bn._buffers
        ghost.ghost_batch_size = ghost_batch_size
        return ghost

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training or input.shape[0] <= self.ghost_batch_size:
            return super().forward(input)
        chunks = list(input.split(self.ghost_batch_size))
        if chunks[-1].numel() == chunks[-1].shape[1]:  # one value per channel: no variance
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return torch.cat([self._chunk(c) for c in chunks])

    def _chunk(self, chunk: Tensor) -> Tensor:
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            chunk,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.weight,
            self.bias,
            True,
            momentum if momentum is not None else 0.0,
            self.eps,
        )


def ghost_batch_norm(model: nn.Module, ghost_batch_size: int = 128) -> int:
    """Replace, in place, every BatchNorm layer of ``model`` by a :class:`GhostBatchNorm` that
    shares its parameters and buffers; return how many layers were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, GhostBatchNorm):
                setattr(parent, name, GhostBatchNorm.from_batchnorm(child, ghost_batch_size))
                replaced += 1
            elif isinstance(child, GhostBatchNorm):
                child.ghost_batch_size = ghost_batch_size
                replaced += 1
    return replaced


@TECHNIQUES.register(
    "ghost_bn",
    summary="Ghost Batch Normalization: normalize large batches in small ghost batches.",
    papers=(3,),
    search_space={"ghost_batch_size": ("choice", [32, 64, 128, 256])},
)
@dataclass
class GhostBN(Technique):
    """Model transform: every BatchNorm becomes a :class:`GhostBatchNorm`."""

    ghost_batch_size: Annotated[int, Ge(1)] = 128  # |B_S| in the paper (its small-batch size)

    touches = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        if ghost_batch_norm(model, self.ghost_batch_size) == 0:
            raise ValueError("ghost_bn: the model has no BatchNorm layer to turn into Ghost BN "
                             "(for heldout's MLP and CNN set model.batch_norm=true)")
        return model
