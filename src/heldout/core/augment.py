"""The extension point for techniques that transform training data: :class:`Augmentation`.

An augmentation is a technique (a dataclass of its hyper-parameters) whose one job is a batch
transform, :meth:`Augmentation.augment`: inputs and targets in, inputs and targets out, every
random draw taken from the ``generator`` it is given. It is

* usable in a plain loop as a callable on a batch: ``x, y = augmentation(x, y)`` (a fresh
  generator from ``seed``, or the one passed);
* applied by the Trainer to each training batch after it is drawn and after every
  ``on_batch_start`` hook (so after a technique that selects the batch), in the order the
  techniques are listed. The Trainer passes a generator seeded by (the run's seed, the
  technique's name, the step), on the batch's device: the same step draws the same
  augmentation whether or not the run was interrupted, so a resumed run stays bit-identical
  with no random state to checkpoint;
* optionally per domain: the Trainer passes each example's training-domain index
  (``groups``) when the training data has one, for transforms that mix or perturb within
  or across domains.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from heldout.core.sampling import stream_generator
from heldout.core.technique import Technique

__all__ = ["Augmentation", "augmentation_generator"]


def augmentation_generator(seed: int, name: str, step: int,
                           device: torch.device | str | None = None) -> torch.Generator:
    """The generator an augmentation draws from at ``step`` of a run seeded ``seed``: a pure
    function of the three (and the device), so a resumed run draws what the unbroken one
    drew.

    Example:
        >>> a = torch.rand(2, generator=augmentation_generator(0, "rfa", 5))
        >>> b = torch.rand(2, generator=augmentation_generator(0, "rfa", 5))
        >>> c = torch.rand(2, generator=augmentation_generator(0, "rfa", 6))
        >>> bool(torch.equal(a, b)), bool(torch.equal(a, c))
        (True, False)
    """
    return stream_generator(seed, f"augment/{name}/{step}", device=device)


class Augmentation(Technique):
    """Base of the techniques that transform training batches; subclasses are dataclasses
    that implement :meth:`augment`. ``touches`` is ``{"augment"}`` (a subclass may add the
    parts it also changes, e.g. ``"loss_term"``)."""

    touches: ClassVar[frozenset[str]] = frozenset({"augment"})

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The transformed batch ``(x, y)``; every random draw from ``generator`` (on
        ``x``'s device); ``groups`` each example's training domain, when known."""
        raise NotImplementedError

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None,
                 seed: int = 0, groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Augment one batch in a plain loop (draws from ``generator``, or from a generator
        seeded by ``seed`` on ``x``'s device)."""
        if generator is None:
            generator = stream_generator(seed, f"augment/{self.name}", device=x.device)
        return self.augment(x, y, generator, groups)
