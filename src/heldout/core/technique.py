"""The extension point for everything that changes training: :class:`Technique`.

A technique is a dataclass of its hyper-parameters (the paper's defaults) that overrides only
the hooks it needs and declares, in ``touches``, which parts of training it changes. Some parts
admit one technique at a time (:data:`EXCLUSIVE`): two step strategies (SAM and another
two-pass optimizer, say), two replacement losses, or two sets of evaluation weights cannot be
combined, and the Trainer refuses such a list with a message that names both techniques.

The math of a technique lives in a plain function or optimizer wrapper that works in a user's
own loop; the Technique subclass is the thin adapter that plugs it into the Trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from heldout.core.hooks import EventHooks

if TYPE_CHECKING:
    from heldout.core.stacked import Stack, StackedRule
    from heldout.core.state import State

__all__ = ["EXCLUSIVE", "TOUCHES", "CombinationError", "Technique", "check_combination"]

TOUCHES = {
    "model": "transforms the model before training (transform_model)",
    "gradients": "changes gradients before the base optimizer steps (wrap_optimizer)",
    "step": "replaces the optimizer step strategy, may call the closure again (wrap_optimizer)",
    "optimizer": "changes the base optimizer's hyper-parameters (wrap_optimizer)",
    "loss": "replaces the training loss (loss)",
    "loss_term": "adds a term to the training loss (loss_term)",
    "after_step": "acts after each optimizer step (on_after_step)",
    "eval_model": "supplies the weights that evaluation uses (eval_model)",
    "batch": "changes or selects the batch (on_batch_start)",
    "augment": "transforms each training batch after it is drawn (augment; heldout.core.augment)",
    "schedule": "sets the learning rate of every step (on_batch_start)",
}
EXCLUSIVE = frozenset({"step", "loss", "eval_model", "schedule"})


class CombinationError(ValueError):
    """Two techniques that cannot act together; the message names both."""


class Technique(EventHooks):
    """Base class of the registered techniques. Subclasses are dataclasses.

    Hooks (all optional): ``transform_model``, ``wrap_optimizer``, ``loss``, ``loss_term``,
    ``eval_model``,
    and the event hooks ``on_fit_start``, ``on_batch_start``, ``on_after_backward``,
    ``on_after_step``, ``on_eval``, ``on_fit_end``. State that must survive a resume goes
    through ``state_dict`` / ``load_state_dict`` (tensors and plain Python values only).
    """

    component_kind = "technique"
    touches: ClassVar[frozenset[str]] = frozenset()
    # Vectorized seeds (heldout.core.stacked): the hyper-parameters in which copies trained
    # together may differ; None: the technique does not vectorize.
    vectorizable: ClassVar[frozenset[str] | None] = None

    @classmethod
    def stacked_rule(cls, copies: Sequence[Any], stack: Stack) -> StackedRule | None:
        """This technique's action on K copies trained as one stack (see
        :mod:`heldout.core.stacked`); ``None`` when the stacked optimizer already does it all
        (weight decay). Only called when ``vectorizable`` is not ``None``."""
        return None

    def transform_model(self, model: nn.Module) -> nn.Module:
        return model

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        return optimizer

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        raise NotImplementedError

    def loss_term(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        raise NotImplementedError

    def eval_model(self, state: State) -> nn.Module | None:
        return None

    def resolve_runs(self, load_model: Callable[[str, str | None], nn.Module]) -> None:
        """Load the models of other runs this technique names (a teacher, say).

        The run layer calls it once, before training, with ``load_model(run, home)``: the
        evaluation model of the finished run ``run`` (id, unique prefix or name) of the store
        in ``home`` (``None``: the run's own store). A technique never reaches into the store
        itself, so it stays usable in a plain loop."""


def check_combination(techniques: Sequence[Technique]) -> None:
    """Refuse a list of techniques in which two claim the same exclusive part of training."""
    owners: dict[str, Technique] = {}
    for technique in techniques:
        unknown = set(technique.touches) - set(TOUCHES)
        if unknown:
            raise ValueError(f"technique {technique.name} declares unknown touches {unknown}")
        for part in sorted(technique.touches & EXCLUSIVE):
            if part in owners:
                raise CombinationError(
                    f"techniques {owners[part].name!r} and {technique.name!r} both replace "
                    f"the {part} ({TOUCHES[part]}); use one of them"
                )
            owners[part] = technique
