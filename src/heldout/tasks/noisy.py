"""Label-noise variants of any classification task: :class:`NoisyLabels` and :func:`flip_labels`.

Each training label is flipped independently with probability η (the noise rate); val, test
and the extra splits keep their clean labels. Two noise models:

* **symmetric**: a flipped label becomes a uniformly random *other* class, so
  P(ỹ = j | y = i) = η / (C − 1) for every j ≠ i;
* **asymmetric** (class-conditional, pair flipping): a flipped label becomes the next class,
  ỹ = (y + 1) mod C, so P(ỹ = i + 1 | y = i) = η.

References:
    Patrini, Rozza, Menon, Nock, Qu. Making Deep Neural Networks Robust to Label Noise: a Loss
    Correction Approach. CVPR 2017. arXiv:1609.03683 (symmetric and asymmetric noise).
    Feng et al. Rethinking Supervised Pre-training for Better Downstream Transferring.
    arXiv:2110.06014 (LOOK, catalog #26, studied on these variants).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import yaml
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import resolve_seed

__all__ = ["NoiseKind", "NoisyLabels", "flip_labels"]

NoiseKind = Literal["symmetric", "asymmetric"]


def flip_labels(labels: Tensor, rate: float, num_classes: int, kind: NoiseKind = "symmetric",
                generator: torch.Generator | None = None) -> Tensor:
    """A copy of the integer ``labels`` with each entry flipped with probability ``rate``:
    to a uniformly random other class (``symmetric``) or to ``(y + 1) mod C``
    (``asymmetric``). All draws come from ``generator``.

    Example:
        >>> flip_labels(torch.tensor([0, 1, 2]), 1.0, 3, "asymmetric").tolist()
        [1, 2, 0]
    """
    if kind not in get_args(NoiseKind):
        raise ValueError(f"kind must be one of {', '.join(get_args(NoiseKind))}, got {kind!r}")
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 to flip a label, got {num_classes}")
    if labels.is_floating_point() or (len(labels) and not (
            int(labels.min()) >= 0 and int(labels.max()) < num_classes)):
        raise ValueError(f"labels must be integer classes in [0, {num_classes})")
    flipped = torch.rand(labels.shape, generator=generator) < rate
    if kind == "symmetric":
        offsets = torch.randint(1, num_classes, labels.shape, generator=generator)
    else:
        offsets = torch.ones(labels.shape, dtype=torch.long)
    offsets = offsets.to(labels.device, labels.dtype) * flipped.to(labels.device)
    return (labels + offsets) % num_classes


@TASKS.register(
    "noisy_labels",
    summary="Any classification task with its training labels flipped at rate `noise` "
    "(symmetric or asymmetric); val and test stay clean.",
    papers=(26,),
    references=("Making Deep Neural Networks Robust to Label Noise: a Loss Correction "
                "Approach (arXiv:1609.03683)",),
)
@dataclass(frozen=True)
class NoisyLabels(Task):
    """The registered task ``base`` (with ``base_params``, a YAML/JSON mapping, as for
    ``target_params`` of other components) whose training labels pass through
    :func:`flip_labels`. ``clean_y`` keeps the true labels (the base task's own clean labels
    when it had label noise already), so memorization measures can tell noisy examples
    apart. The flips draw from their own stream of the seed: the base task's split does not
    change with the noise rate.

    Example:
        >>> task = NoisyLabels(base="digits", noise=0.2)
        >>> splits = task.splits(seed=0)
        >>> len(splits.train), float(splits.train.corrupted.float().mean()) > 0.1
        (1078, True)
    """

    base: str = "digits"  # the registered classification task whose labels are flipped
    base_params: str = "{}"  # that task's parameters, a YAML/JSON mapping
    # probability η that a training label is flipped
    noise: Annotated[float, Interval(0, 1)] = 0.2
    kind: NoiseKind = "symmetric"  # symmetric: any other class; asymmetric: y → y + 1 mod C
    # if set, draws the flips instead of the run's seed (the base task keeps its own)
    data_seed: Annotated[int | None, Ge(0)] = None
    _base_task: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.kind not in get_args(NoiseKind):
            raise ValueError(f"kind must be one of {', '.join(get_args(NoiseKind))}, got "
                             f"{self.kind!r}")
        if self.base == "noisy_labels" or self.base not in TASKS:
            raise ValueError(f"base: unknown or invalid task {self.base!r}; valid tasks: "
                             + ", ".join(n for n in TASKS.names() if n != "noisy_labels"))
        params = yaml.safe_load(self.base_params)
        if not isinstance(params, dict):
            raise ValueError(f"base_params must be a mapping, got {self.base_params!r}")
        object.__setattr__(self, "_base_task", TASKS.build(self.base, **params))

    @property
    def input(self) -> InputSpec:
        return self._base_task.input

    def splits(self, seed: int) -> Splits:
        splits: Splits = self._base_task.splits(seed)
        if splits.regression:
            raise ValueError(f"noisy_labels: base task {self.base!r} is a regression task; "
                             "label noise needs integer classes")
        train = splits.train
        generator = stream_generator(resolve_seed(seed, self.data_seed), "noisy_labels")
        clean = train.y if train.clean_y is None else train.clean_y
        noisy = flip_labels(train.y, self.noise, splits.num_classes, self.kind, generator)
        return Splits(
            train=Split(train.x, noisy, clean, train.groups),
            val=splits.val, test=splits.test, input=splits.input,
            num_classes=splits.num_classes, extra=splits.extra,
        )
