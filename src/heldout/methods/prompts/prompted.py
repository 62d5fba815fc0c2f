"""Soft prompts on a pre-trained text classifier: :func:`prepend_prompts`, the
:class:`PromptedClassifier` wrapper (frozen encoder, learnable prompts or a prompt generator,
trainable head) and the ``prompt_tuning`` technique.

A :class:`~heldout.models.pretrained.PretrainedTextClassifier` exposes ``embed`` (token ids →
input embeddings) and ``encode`` (embeddings + mask → mean-pooled features); a prompt method
prepends n vectors to the embeddings and extends the mask, so the encoder attends to them and
the pooled features average over them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.technique import Technique
from heldout.models.pretrained import PAD_ID, PretrainedTextClassifier
from heldout.registry import TECHNIQUES

__all__ = ["PromptTuning", "PromptedClassifier", "batched", "check_text_classifier",
           "initial_prompts", "prepend_prompts"]

LESTER = ("The Power of Scale for Parameter-Efficient Prompt Tuning (Lester et al., "
          "arXiv:2104.08691)")


def prepend_prompts(embeds: Tensor, mask: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor]:
    """Prepend soft prompts to input embeddings ``(N, L, H)`` and extend the mask ``(N, L)``.

    ``prompts`` is ``(n, H)`` (shared by every example, prompt tuning) or ``(N, n, H)``
    (instance-specific, a prompt generator); the prompt positions are always attended to.

    Example:
        >>> e, m = prepend_prompts(torch.zeros(2, 3, 4), torch.ones(2, 3), torch.ones(5, 4))
        >>> e.shape, m.shape, m[0, :5].tolist()
        (torch.Size([2, 8, 4]), torch.Size([2, 8]), [1.0, 1.0, 1.0, 1.0, 1.0])

    References:
        The Power of Scale for Parameter-Efficient Prompt Tuning (Lester et al.,
        arXiv:2104.08691), §2.
    """
    if embeds.dim() != 3 or mask.shape != embeds.shape[:2]:
        raise ValueError(f"prepend_prompts: embeds must be (N, L, H) and mask (N, L), got "
                         f"{tuple(embeds.shape)} and {tuple(mask.shape)}")
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(embeds.shape[0], -1, -1)
    if prompts.dim() != 3 or prompts.shape[0] != embeds.shape[0] \
            or prompts.shape[2] != embeds.shape[2]:
        raise ValueError(f"prepend_prompts: prompts must be (n, {embeds.shape[2]}) or "
                         f"({embeds.shape[0]}, n, {embeds.shape[2]}), got "
                         f"{tuple(prompts.shape)}")
    ones = torch.ones(prompts.shape[:2], dtype=mask.dtype, device=mask.device)
    return torch.cat([prompts.to(embeds.dtype), embeds], 1), torch.cat([ones, mask], 1)


def check_text_classifier(model: nn.Module, technique: str) -> PretrainedTextClassifier:
    """``model`` itself if it is a pre-trained text classifier, else a clear error."""
    if isinstance(model, PromptedClassifier):
        raise ValueError(f"{technique}: the model already carries soft prompts; use one "
                         "prompt technique per run")
    if not isinstance(model, PretrainedTextClassifier):
        raise ValueError(f"{technique} acts on a pre-trained text classifier (model=minilm or "
                         f"model=tiny_bert), got {type(model).__name__}")
    return model


class PromptedClassifier(nn.Module):
    """A frozen pre-trained text encoder read through soft prompts and a trainable head.

    The encoder's parameters are frozen and it always runs in eval mode (no dropout: the
    frozen model is a fixed function, as CLIP is in CoOp/PromptSRC). The prompts are the
    parameter ``prompt`` ``(n, H)``; with a ``generator`` (a module mapping the frozen pooled
    features ``(N, H)`` to ``(N, n, H)``) they are instance-specific instead. ``forward``
    keeps the pooled features of its last call in ``last_features`` (for loss terms that
    regularize them in the same step, without a second forward).
    """

    def __init__(self, base: PretrainedTextClassifier, prompt: Tensor,
                 generator: nn.Module | None = None) -> None:
        super().__init__()
        if prompt.dim() != 2 or prompt.shape[1] != base.hidden_size:
            raise ValueError(f"prompt must be (n, {base.hidden_size}), got "
                             f"{tuple(prompt.shape)}")
        self.base = base
        for parameter in base.encoder.parameters():
            parameter.requires_grad_(False)
        self.prompt = nn.Parameter(prompt.detach().clone())
        self.generator = generator
        self.last_features: Tensor | None = None
        base.encoder.eval()

    @property
    def head(self) -> nn.Linear:
        return self.base.head

    @property
    def num_prompts(self) -> int:
        return int(self.prompt.shape[0])

    def train(self, mode: bool = True) -> PromptedClassifier:
        super().train(mode)
        self.base.encoder.eval()  # the frozen encoder stays a fixed function
        return self

    @torch.no_grad()
    def frozen_features(self, input_ids: Tensor) -> Tensor:
        """Pooled features of the frozen encoder without prompts (the pre-trained model)."""
        return self.base.features(input_ids)

    def prompts_for(self, input_ids: Tensor) -> Tensor:
        """The prompts of a batch: ``(n, H)``, or ``(N, n, H)`` from the generator."""
        if self.generator is None:
            return self.prompt
        return self.generator(self.frozen_features(input_ids))

    def features(self, input_ids: Tensor) -> Tensor:
        input_ids = input_ids.long()
        embeds, mask = prepend_prompts(self.base.embed(input_ids), input_ids != PAD_ID,
                                       self.prompts_for(input_ids))
        return self.base.encode(embeds, mask)

    def forward(self, input_ids: Tensor) -> Tensor:
        features = self.features(input_ids)
        self.last_features = features
        return self.base.head(self.base.dropout(features))


def initial_prompts(base: PretrainedTextClassifier, num_prompts: int,
                    init_words: Sequence[str] = (), generator: torch.Generator | None = None
                    ) -> Tensor:
    """Initial prompt vectors ``(num_prompts, H)``: the input embeddings of the word pieces of
    ``init_words`` (in order, cycled to ``num_prompts``), or, without words, the embeddings of
    random vocabulary entries (Lester et al.'s "sampled vocabulary" initialization).

    References:
        Lester et al., arXiv:2104.08691, §3.2 (prompt initialization).
    """
    if num_prompts < 0:
        raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")
    table: Tensor = base.encoder.get_input_embeddings().weight.detach()
    if init_words:
        from heldout.models.pretrained import tokenizer

        ids = [int(i) for i in tokenizer()(" ".join(init_words),
                                           add_special_tokens=False)["input_ids"]]
        if not ids:
            raise ValueError(f"init_words {tuple(init_words)!r} have no word pieces")
        index = torch.tensor([ids[k % len(ids)] for k in range(num_prompts)], dtype=torch.long)
    else:
        low = 1000 if table.shape[0] > 2000 else 1  # BERT: ids < 1000 are special/[unused]
        index = torch.randint(low, table.shape[0], (num_prompts,), generator=generator)
    return table[index.to(table.device)].clone()


@TECHNIQUES.register(
    "prompt_tuning",
    summary="Soft prompt tuning: n learnable vectors prepended to a frozen pre-trained text "
    "encoder's input embeddings; only the prompts and the head train.",
    search_space={"num_prompts": ("int_uniform", 1, 32)},
    references=(LESTER,),
)
@dataclass
class PromptTuning(Technique):
    """Prepend ``num_prompts`` learnable vectors to the input embeddings of a pre-trained text
    classifier (``minilm``/``tiny_bert``) whose encoder is frozen; the prompts and the head
    train. Initialized from the embeddings of ``init_words`` (cycled) or of random vocabulary
    entries (drawn from the run's seeded global RNG). With ``num_prompts = 0`` the model is
    the frozen-encoder classifier.

    Deviation: Lester et al. tune T5's prompts with the model's own output vocabulary as the
    head; here a linear head over the mean-pooled features trains with the prompts.

    References:
        The Power of Scale for Parameter-Efficient Prompt Tuning (arXiv:2104.08691).
    """

    num_prompts: Annotated[int, Ge(0)] = 8  # soft prompt vectors prepended to the input
    init_words: tuple[str, ...] = ()  # initialize from these words' embeddings (else random)

    touches = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        base = check_text_classifier(model, self.name)
        return PromptedClassifier(base, initial_prompts(base, self.num_prompts,
                                                        self.init_words))


def batched(fn: Any, inputs: Tensor, chunk: int = 256) -> Tensor:
    """``fn`` over ``inputs`` in chunks, without gradients (features of a whole split)."""
    with torch.no_grad():
        return torch.cat([fn(inputs[i:i + chunk]) for i in range(0, len(inputs), chunk)])
