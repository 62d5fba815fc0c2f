"""Soft Prompt Generation (#71): instance-specific soft prompts from a small generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.technique import Technique
from heldout.methods.prompts.prompted import (
    PromptedClassifier,
    check_text_classifier,
    initial_prompts,
)
from heldout.registry import TECHNIQUES

__all__ = ["PromptGenerator", "SoftPromptGeneration"]


class PromptGenerator(nn.Module):
    """Instance-specific prompts from frozen features: P(x) = P₀ + reshape(MLP(f(x))), with
    f(x) the frozen encoder's pooled features, P₀ a learned base prompt ``(n, H)`` and the
    MLP's last layer zero-initialized (so training starts from prompt tuning with P₀).

    Example:
        >>> generator = PromptGenerator(torch.zeros(2, 4), hidden=8)
        >>> generator(torch.randn(3, 4)).shape
        torch.Size([3, 2, 4])
    """

    def __init__(self, base_prompt: Tensor, hidden: int = 64) -> None:
        super().__init__()
        n, width = base_prompt.shape
        self.base_prompt = nn.Parameter(base_prompt.detach().clone())
        last = nn.Linear(hidden, n * width)
        nn.init.zeros_(last.weight)  # training starts from prompt tuning with the base prompt
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), last)

    def forward(self, features: Tensor) -> Tensor:
        offset = self.mlp(features).view(features.shape[0], *self.base_prompt.shape)
        return torch.add(self.base_prompt.unsqueeze(0), offset)


@TECHNIQUES.register(
    "soft_prompt_generation",
    summary="Soft Prompt Generation: a small generator maps each input's frozen features to "
    "instance-specific soft prompts for a frozen pre-trained text encoder.",
    papers=(71,),
    search_space={"num_prompts": ("int_uniform", 1, 16), "hidden": ("int_uniform", 16, 256)},
    references=("Soft Prompt Generation for Domain Generalization (Bai et al., "
                "arXiv:2404.19286)",),
)
@dataclass
class SoftPromptGeneration(Technique):
    """Prompts generated per example by a :class:`PromptGenerator` from the frozen encoder's
    pooled features of the input; the generator and the head train, the encoder is frozen.

    Stand-in: SPG trains in two stages — per-domain soft prompts first ("domain prompt
    labels"), then a conditional GAN that generates them from image features — and uses only
    the generator at test time. Here the generator is trained end to end with the
    classification loss (no adversarial stage, no domain prompt labels), as a residual on a
    learned base prompt; at test time it produces the prompts of unseen-domain inputs the
    same way. A generator that outputs a constant prompt is prompt tuning with that prompt.

    References:
        Soft Prompt Generation for Domain Generalization (arXiv:2404.19286).
    """

    num_prompts: Annotated[int, Ge(1)] = 4
    hidden: Annotated[int, Ge(1)] = 64  # the generator's hidden width
    init_words: tuple[str, ...] = ()

    touches = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        base = check_text_classifier(model, self.name)
        start = initial_prompts(base, self.num_prompts, self.init_words)
        return PromptedClassifier(base, start[:0],
                                  PromptGenerator(start, self.hidden).to(start.device))

