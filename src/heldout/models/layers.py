"""Layers shared by the model zoo."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Activation", "Square", "TokenLinear", "activation_module"]


class _GatherSum(torch.autograd.Function):
    """out[b] = Σ_p rows[index[b, p]] through ``F.embedding_bag`` (fast), with a backward made
    of differentiable ops, so Hessian-vector products (double backward) work; embedding_bag's
    own backward cannot be differentiated again."""

    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = rows.shape[0]
        return F.embedding_bag(index, rows, mode="sum")

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        grad_rows = grad_output.new_zeros(ctx.num_rows, grad_output.shape[1])
        for position in range(index.shape[1]):  # no (batch * positions, out) copy: 5x faster
            grad_rows = grad_rows.index_add(0, index[:, position], grad_output)
        return grad_rows, None


class TokenLinear(nn.Linear):
    """A linear layer on one-hot tokens, computed as a sum of looked-up weight columns.

    ``TokenLinear(n_positions, vocab, out)`` is the function ``nn.Linear(n_positions * vocab,
    out)`` applied to the concatenated one-hot encodings of ``n_positions`` tokens: for tokens
    ``t_0 .. t_{n-1}`` the output is ``bias + Σ_i weight[:, i * vocab + t_i]``. It never builds
    the one-hot input nor does the ``n_positions * vocab``-wide matmul. It *is* an ``nn.Linear``
    (same ``weight``/``bias`` names and shapes, same initialization, so for the same torch seed
    it draws identical weights), which keeps weight decay, norms and state dicts interchangeable
    with the one-hot model. Integer inputs of shape ``(..., n_positions)`` are looked up; a
    floating-point input of shape ``(..., n_positions * vocab)`` (a one-hot or a relaxation of
    one, e.g. to differentiate with respect to the input) goes through the plain linear map.
    A token outside ``[0, vocab)`` raises an IndexError from the lookup.

    Example:
        >>> layer = TokenLinear(n_positions=2, vocab=5, out_features=3)
        >>> layer(torch.tensor([[1, 4], [0, 0]])).shape
        torch.Size([2, 3])
    """

    def __init__(self, n_positions: int, vocab: int, out_features: int, bias: bool = True) -> None:
        if n_positions < 1 or vocab < 1:
            raise ValueError(
                f"TokenLinear needs n_positions >= 1 and vocab >= 1, got {n_positions}, {vocab}"
            )
        super().__init__(n_positions * vocab, out_features, bias=bias)
        self.n_positions = n_positions
        self.vocab = vocab

    def forward(self, input: Tensor) -> Tensor:
        if input.is_floating_point():
            return super().forward(input)
        if input.shape[-1] != self.n_positions:
            raise ValueError(
                f"expected tokens of shape (..., {self.n_positions}), got {tuple(input.shape)}"
            )
        offsets = torch.arange(self.n_positions, device=input.device) * self.vocab
        # A token outside [0, vocab) would silently read another position's column; send it to
        # the out-of-range index ``in_features`` instead, so the lookup fails. Branch-free, so
        # no host sync and it works under torch.func.vmap (per-example gradients).
        valid = (input >= 0) & (input < self.vocab)
        index = torch.where(valid, input + offsets, self.in_features)
        rows = self.weight.t().contiguous()  # (in_features, out_features): contiguous gathers
        if index.dim() == 2 and not torch._C._functorch.is_functorch_wrapped_tensor(index):
            if index.device.type == "cpu" and not bool(valid.all()):  # free on the CPU
                raise IndexError(f"token out of range [0, {self.vocab})")
            output = _GatherSum.apply(rows, index)  # fused gather-and-sum
        else:  # extra batch dimensions, or under torch.func transforms (vmap has no
            # batching rule for embedding_bag)
            output = F.embedding(index, rows).sum(dim=-2)
        return output if self.bias is None else output + self.bias

    def extra_repr(self) -> str:
        return (
            f"n_positions={self.n_positions}, vocab={self.vocab}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


Activation = Literal["relu", "gelu", "tanh", "square"]


class Square(nn.Module):
    """φ(z) = z², the activation of the modular-arithmetic MLPs of Gromov (arXiv:2301.02679)
    and Doshi et al. (arXiv:2310.13061)."""

    def forward(self, input: Tensor) -> Tensor:
        return input * input


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "square": Square,
}


def activation_module(name: str) -> nn.Module:
    """A fresh activation module by name: ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"square"``."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid activations: {', '.join(_ACTIVATIONS)}"
        ) from None
