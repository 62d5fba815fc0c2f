"""A small transformer encoder with a per-block choice of pre- or post-LayerNorm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.models.base import ModelSpec
from heldout.models.layers import activation_module
from heldout.registry import MODELS

__all__ = [
    "MultiHeadSelfAttention",
    "Norm",
    "Transformer",
    "TransformerBlock",
    "TransformerNetwork",
]

Norm = Literal["pre", "post"]
FeedForwardActivation = Literal["relu", "gelu"]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: ``softmax(QKᵀ/√d_head) V`` per head.

    Queries, keys and values come from one linear map ``qkv`` of the input; the heads are
    concatenated and mixed by the linear map ``output``. ``causal`` lets position ``i`` attend
    only to positions ``<= i``; ``dropout`` is applied to the attention weights in training.
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = False
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.output = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        heads = self.qkv(x).view(batch, length, 3, self.n_heads, d_model // self.n_heads)
        query, key, value = heads.permute(2, 0, 3, 1, 4)  # each (batch, heads, length, d_head)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
        )
        return self.output(attended.transpose(1, 2).reshape(batch, length, d_model))


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward sublayers with residuals, LayerNorm placed by ``norm``.

    Pre-LN (``norm="pre"``): ``x = x + attention(LN₁(x))``, then ``x = x + ff(LN₂(x))``.
    Post-LN (``norm="post"``): ``x = LN₁(x + attention(x))``, then ``x = LN₂(x + ff(x))``.
    ``ff`` is ``Linear(d_model, d_ff) → activation → Linear(d_ff, d_model)``; dropout acts on
    each sublayer's output before the residual sum. Both placements hold the same modules, so
    ``block.norm`` may be reassigned (as Mix-LN does per layer) without changing parameters.

    References:
        Vaswani et al. Attention Is All You Need. arXiv:1706.03762 (post-LN).
        Xiong et al. On Layer Normalization in the Transformer Architecture. arXiv:2002.04745.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        norm: Norm = "pre",
        dropout: float = 0.0,
        causal: bool = False,
        activation: FeedForwardActivation = "relu",
    ) -> None:
        super().__init__()
        if norm not in get_args(Norm):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.norm = norm
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = MultiHeadSelfAttention(d_model, n_heads, dropout, causal)
        self.feedforward_norm = nn.LayerNorm(d_model)
        self.feedforward = nn.Sequential(
            nn.Linear(d_model, d_ff), activation_module(activation), nn.Linear(d_ff, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "pre":
            x = x + self.dropout(self.attention(self.attention_norm(x)))
            return x + self.dropout(self.feedforward(self.feedforward_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x)))
        return self.feedforward_norm(x + self.dropout(self.feedforward(x)))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


class TransformerNetwork(nn.Module):
    """Embedding + learned positions, a stack of :class:`TransformerBlock`, last-position head.

    Token inputs of shape ``(L,)`` are embedded by ``nn.Embedding(vocab, d_model)``; continuous
    inputs of shape ``(L,)`` treat each scalar as a token projected by ``nn.Linear(1, d_model)``.
    ``norms`` gives each block's LayerNorm placement; a final LayerNorm precedes the head when
    the last block is pre-LN (a post-LN block already ends in one).
    """

    def __init__(
        self,
        input: InputSpec,
        num_classes: int,
        norms: Sequence[Norm],
        d_model: int = 128,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.0,
        causal: bool = False,
        activation: FeedForwardActivation = "relu",
    ) -> None:
        super().__init__()
        if len(input.shape) != 1:
            raise ValueError(f"Transformer takes inputs of shape (L,), got {input.shape}")
        if not norms:
            raise ValueError("a transformer needs at least one block (norms is empty)")
        self.input_kind = input.kind
        if input.kind == "tokens":
            assert input.vocab is not None  # InputSpec guarantees it for tokens
            self.embedding: nn.Module = nn.Embedding(input.vocab, d_model)
        else:
            self.embedding = nn.Linear(1, d_model)
        self.position_embedding = nn.Embedding(input.shape[0], d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, norm, dropout, causal, activation)
            for norm in norms
        )
        self.final_norm = nn.LayerNorm(d_model) if norms[-1] == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        embedded = self.embedding(x if self.input_kind == "tokens" else x.unsqueeze(-1))
        positions = torch.arange(x.shape[1], device=x.device)
        hidden = self.embedding_dropout(embedded + self.position_embedding(positions))
        for block in self.blocks:
            hidden = block(hidden)
        return self.head(self.final_norm(hidden[:, -1]))


@MODELS.register(
    "transformer",
    summary="Transformer encoder (pre- or post-LN blocks) read out at the last position.",
)
@dataclass(frozen=True)
class Transformer(ModelSpec):
    """A transformer classifier over a short sequence, read out from its last position.

    ``h_0 = embed(x) + position``; each of ``n_layers`` blocks applies multi-head
    self-attention and a feed-forward layer with residual connections and LayerNorm placed
    before (``pre``) or after (``post``) each sublayer; logits are ``W LN(h_L[-1]) + b`` (the
    final LN only for pre-LN). Initialization is PyTorch's default for each module.

    References:
        Vaswani et al. Attention Is All You Need. arXiv:1706.03762.
        Xiong et al. On Layer Normalization in the Transformer Architecture. arXiv:2002.04745.

    Example:
        >>> import torch
        >>> from heldout.tasks.base import InputSpec
        >>> spec = Transformer(d_model=16, n_heads=2)
        >>> net = spec.build(InputSpec("tokens", (2,), vocab=7), num_classes=7)
        >>> net(torch.tensor([[3, 5]])).shape
        torch.Size([1, 7])
    """

    d_model: Annotated[int, Ge(1)] = 128  # width of the residual stream
    n_heads: Annotated[int, Ge(1)] = 4  # attention heads (must divide d_model)
    n_layers: Annotated[int, Ge(1)] = 1  # number of transformer blocks
    # hidden width of the feed-forward layer (None: 4 * d_model)
    d_ff: Annotated[int | None, Ge(1)] = None
    norm: Norm = "pre"  # LayerNorm placement: "pre" (x + f(LN(x))) or "post" (LN(x + f(x)))
    # dropout on embeddings, attention weights and sublayer outputs
    dropout: Annotated[float, Interval(0, 1, closed="left")] = 0.0
    causal: bool = False  # mask attention so each position sees only itself and earlier ones
    activation: FeedForwardActivation = "relu"  # nonlinearity inside the feed-forward layer

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.norm not in get_args(Norm):
            raise ValueError(f"norm must be one of pre, post, got {self.norm!r}")
        if self.activation not in get_args(FeedForwardActivation):
            raise ValueError(f"activation must be one of relu, gelu, got {self.activation!r}")

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        return TransformerNetwork(
            input,
            num_classes,
            norms=(self.norm,) * self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            dropout=self.dropout,
            causal=self.causal,
            activation=self.activation,
        )
