"""Colour digits: scikit-learn's 8x8 digits as RGB images, one colouring per domain, so that
colour transforms (and colour-sensitive defences such as a camera pipeline) have something to
act on (see :mod:`heldout.tasks.domains.base` for the domain convention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.domains.base import (
    DOMAIN_REFERENCES,
    DomainData,
    DomainSuite,
    equal_domains,
    source_arrays,
)

__all__ = ["COLORINGS", "DigitsColor", "colorize"]

# name: (foreground RGB, background RGB); a stroke of intensity s in [0, 1] gets
# background * (1 - s) + foreground * s in every channel
COLORINGS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "gray": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),  # the original digits in every channel
    "red": ((1.0, 0.25, 0.25), (0.0, 0.0, 0.0)),
    "green": ((0.25, 1.0, 0.25), (0.0, 0.0, 0.0)),
    "blue": ((0.25, 0.25, 1.0), (0.0, 0.0, 0.0)),
    "yellow_on_blue": ((1.0, 1.0, 0.25), (0.0, 0.0, 0.5)),
    "inverted": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # dark strokes on white
}


def colorize(intensity: Tensor, foreground: Tensor, background: Tensor) -> Tensor:
    """RGB images ``(N, 3, H, W)`` from stroke intensities ``(N, H, W)`` in ``[0, 1]``: each
    pixel is ``background * (1 - s) + foreground * s`` with per-image colours ``(N, 3)`` (or
    one colour ``(3,)`` for all).

    Example:
        >>> s = torch.tensor([[[0.0, 1.0]]])
        >>> colorize(s, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))[0, :, 0]
        tensor([[0., 1.],
                [0., 0.],
                [1., 0.]])
    """
    if intensity.dim() != 3:
        raise ValueError(f"intensity must be (N, H, W), got shape {tuple(intensity.shape)}")
    fg = foreground.to(intensity.dtype).expand(len(intensity), 3)[:, :, None, None]
    bg = background.to(intensity.dtype).expand(len(intensity), 3)[:, :, None, None]
    s = intensity[:, None]
    return bg * (1 - s) + fg * s


@TASKS.register(
    "digits_color",
    summary="scikit-learn's 8x8 digits as RGB images (3x8x8, flattened), one colouring per "
    "domain.",
    references=DOMAIN_REFERENCES,
)
@dataclass(frozen=True)
class DigitsColor(DomainSuite):
    """scikit-learn's digits dealt into disjoint random domains, each drawn in its own colours.

    The 1,797 images (pixels / 16, in ``[0, 1]``) are dealt at random into ``len(colorings)``
    equal domains. Domain ``k`` paints stroke intensity ``s`` as
    ``background_k * (1 - s) + foreground_k * s`` per RGB channel (:func:`colorize`), with the
    colours of :data:`COLORINGS` (default: ``gray`` white on black, ``red`` and ``green``
    strokes on black, ``yellow_on_blue``), each image's two colours jittered by independent
    Gaussian noise of std ``jitter`` per channel (default 0.05, clipped to ``[0, 1]``; drawn
    from the stream ``jitter@<domain>``). Pixels stay in ``[0, 1]``. Images are ``(3, 8, 8)``
    channel-major, flattened to 192 features (``x.reshape(-1, 3, 8, 8)`` recovers them), as
    the other digit suites flatten theirs. Domain names are the colouring names.

    References:
        Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.

    Example:
        >>> task = DigitsColor(held_out=(3,))
        >>> task.domain_names(), task.input.shape
        (('gray', 'red', 'green', 'yellow_on_blue'), (192,))
    """

    colorings: tuple[str, ...] = ("gray", "red", "green", "yellow_on_blue")  # one per domain
    # std of the per-image Gaussian jitter of both colours, per channel
    jitter: Annotated[float, Interval(0, 1)] = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "colorings", tuple(self.colorings))
        unknown = [c for c in self.colorings if c not in COLORINGS]
        if unknown:
            raise ValueError(f"colorings: unknown {unknown}; valid: {', '.join(COLORINGS)}")
        if len(self.colorings) < 2:
            raise ValueError(f"colorings: needs at least 2 (domains), got {self.colorings}")
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return self.colorings

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (192,))

    @property
    def num_classes(self) -> int:
        return 10

    def _domains(self, seed: int) -> list[DomainData]:
        x, y = source_arrays("digits", 0, 0)
        out = []
        for rows, name in zip(equal_domains(len(y), len(self.colorings), seed), self.colorings,
                              strict=True):
            foreground, background = (torch.tensor(c, dtype=x.dtype) for c in COLORINGS[name])
            jitter = stream_generator(seed, f"jitter@{name}")
            noise = torch.randn(2, len(rows), 3, generator=jitter, dtype=x.dtype) * self.jitter
            images = colorize(x[rows].reshape(-1, 8, 8), (foreground + noise[0]).clamp(0, 1),
                              (background + noise[1]).clamp(0, 1))
            out.append(DomainData(images.reshape(len(rows), 192), y[rows], index=rows))
        return out
