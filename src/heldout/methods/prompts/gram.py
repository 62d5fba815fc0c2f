"""GRAM (#40): a meta-learned soft prompt initialization with a gradient regulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.technique import Technique
from heldout.methods.prompts.prompted import (
    PromptedClassifier,
    check_text_classifier,
    initial_prompts,
)
from heldout.registry import TECHNIQUES

__all__ = ["GRAM", "gram_meta_step", "regulated_gradient"]


def regulated_gradient(gradient: Tensor, regulator: Tensor) -> Tensor:
    """The gradient regulator ψ(g) = 2·sigmoid(ρ) ⊙ g: an element-wise gate in (0, 2),
    the identity at ρ = 0.

    Example:
        >>> regulated_gradient(torch.tensor([1.0, -2.0]), torch.zeros(2))
        tensor([ 1., -2.])
    """
    return 2 * torch.sigmoid(regulator) * gradient


def gram_meta_step(model: PromptedClassifier, regulator: Tensor,
                   support: tuple[Tensor, Tensor], query: tuple[Tensor, Tensor],
                   inner_lr: float) -> Tensor:
    """One first-order meta step: adapt the prompt on the ``support`` domain with the
    regulated gradient, P' = P − α ψ(∇_P L_s(P)), and return the ``query`` domain's loss
    L_q(P') — differentiable in P (first order: ∇_P L_s is held constant) and in ρ.

    References:
        Li et al., Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language
        Models (GRAM, arXiv:2303.06571), Algorithm 1 (cross-domain support/query split).
    """
    x_s, y_s = support
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(x_s), y_s), model.prompt)
    adapted = model.prompt - inner_lr * regulated_gradient(gradient.detach(), regulator)
    logits = torch.func.functional_call(model, {"prompt": adapted}, (query[0],))
    return F.cross_entropy(logits, query[1])


@TECHNIQUES.register(
    "gram",
    summary="GRAM: soft prompts whose initialization and gradient regulator are meta-learned "
    "across the source domains (first-order), then prompt tuning with the regulator.",
    papers=(40,),
    search_space={"meta_steps": ("int_uniform", 0, 50)},
    references=("Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language "
                "Models (arXiv:2303.06571)",),
)
@dataclass
class GRAM(Technique):
    """Meta-learn the prompt initialization and a gradient regulator, then prompt-tune.

    At fit start, ``meta_steps`` first-order meta steps (:func:`gram_meta_step`): draw two
    training domains (``train_groups``; without them, two random halves), take a batch of each
    as support and query, adapt the prompt on the support with the regulated gradient and
    update the prompt initialization, the head and the regulator ρ (element-wise, ``(n, H)``)
    with Adam on the query loss. Training then starts from the meta-learned prompt and every
    prompt gradient passes through the regulator ψ(g) = 2·sigmoid(ρ) ⊙ g.

    Stand-in: GRAM meta-learns on unlabeled image–text pairs (CLIP's contrastive loss) with a
    small network as the regulator; here the labelled source domains of the run with the
    classification loss, and an element-wise gate. With ``meta_steps = 0`` training equals
    ``prompt_tuning`` from the same initialization (ψ is the identity at ρ = 0). Meta-learning
    draws its batches from a generator seeded by the run's seed.

    References:
        Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models
        (arXiv:2303.06571).
    """

    num_prompts: Annotated[int, Ge(1)] = 8
    init_words: tuple[str, ...] = ()
    meta_steps: Annotated[int, Ge(0)] = 20  # first-order meta steps before training
    meta_batch_size: Annotated[int, Ge(1)] = 16
    inner_lr: Annotated[float, Gt(0)] = 0.1  # α of the inner (support) step
    meta_lr: Annotated[float, Gt(0)] = 1e-3  # Adam step of the meta update

    touches = frozenset({"model", "gradients"})  # prompt gradients regulated after backward

    def transform_model(self, model: nn.Module) -> nn.Module:
        base = check_text_classifier(model, self.name)
        prompted = PromptedClassifier(base, initial_prompts(base, self.num_prompts,
                                                            self.init_words))
        prompted.register_buffer("regulator", torch.zeros_like(prompted.prompt))
        prompted.register_buffer("meta_done", torch.zeros((), dtype=torch.bool))
        return prompted

    def on_after_backward(self, state: Any) -> None:
        model: PromptedClassifier = state.model
        if model.prompt.grad is not None:
            model.prompt.grad.copy_(regulated_gradient(model.prompt.grad,
                                                       model.get_buffer("regulator")))

    def on_fit_start(self, state: Any) -> None:
        model: PromptedClassifier = state.model
        if self.meta_steps == 0 or bool(model.get_buffer("meta_done")):
            return  # nothing to learn, or restored from a checkpoint
        if state.train_data is None:
            raise ValueError("gram needs the training tensors to meta-learn its prompt")
        x, y = state.train_data
        device = model.prompt.device
        x, y = x.to(device).long(), y.to(device).long()
        generator = torch.Generator().manual_seed(int(state.seed))
        groups = state.train_groups
        if groups is None:
            groups = torch.randperm(len(x), generator=generator) % 2
        domains = [torch.nonzero(groups.cpu() == g).flatten() for g in groups.unique().cpu()]
        if len(domains) < 2:
            raise ValueError("gram needs at least two source domains (train_groups)")
        regulator = torch.zeros_like(model.prompt, requires_grad=True)
        params = [model.prompt, *model.head.parameters(), regulator]
        optimizer = torch.optim.Adam(params, lr=self.meta_lr)
        for _ in range(self.meta_steps):
            pair = torch.randperm(len(domains), generator=generator)[:2]
            batches = []
            for d in pair.tolist():
                pick = torch.randint(len(domains[d]), (self.meta_batch_size,),
                                     generator=generator)
                index = domains[d][pick].to(device)
                batches.append((x[index], y[index]))
            optimizer.zero_grad()
            loss = gram_meta_step(model, regulator, batches[0], batches[1], self.inner_lr)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            model.get_buffer("regulator").copy_(regulator)
            model.get_buffer("meta_done").fill_(True)
        for p in params:
            p.grad = None
