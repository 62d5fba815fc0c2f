"""scikit-learn's bundled 8x8 handwritten digits, with a stratified train/val/test split."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import (
    import_optional,
    noisy_split,
    resolve_seed,
    stratified_partition,
)

__all__ = ["Digits"]


@functools.cache
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    datasets = import_optional("sklearn.datasets")
    images, labels = datasets.load_digits(return_X_y=True)
    features = (np.asarray(images, dtype=np.float32) / 16.0).reshape(len(labels), 64)
    features.flags.writeable = False  # shared by every caller in this process
    labels = np.asarray(labels, dtype=np.int64)
    labels.flags.writeable = False
    return features, labels


@TASKS.register(
    "digits",
    summary="scikit-learn's 8x8 handwritten digits (1,797 images), stratified split, label noise.",
)
@dataclass(frozen=True)
class Digits(Task):
    """Handwritten digits: 1,797 8x8 grey images in ten classes, bundled with scikit-learn.

    Pixels (0-16) are divided by 16 into ``[0, 1]`` and flattened to 64 features. Within each
    class, ``round(test_fraction * n_class)`` random images go to test, ``round(val_fraction *
    n_class)`` to val and the rest to train, so every split keeps the class mix. Then
    ``round(label_noise * n_train)`` random train labels are replaced by a random different
    class (``clean_y`` keeps the true ones).

    References:
        Alpaydin, Kaynak. Optical Recognition of Handwritten Digits. UCI Machine Learning
        Repository, 1998 (no arXiv id); shipped as ``sklearn.datasets.load_digits``.

    Example:
        >>> splits = Digits().splits(seed=0)
        >>> tuple(splits.train.x.shape), len(splits.val), len(splits.test), splits.num_classes
        ((1078, 64), 269, 450, 10)
    """

    # fraction of each class held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.15
    # fraction of each class held out as test
    test_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.25
    # fraction of train labels replaced by a different class
    label_noise: Annotated[float, Interval(0, 1)] = 0.0
    # if set, splits and corrupts instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        features, labels = digits_arrays()
        x, y = torch.tensor(features), torch.tensor(labels)
        test, val, train = stratified_partition(
            y, (self.test_fraction, self.val_fraction), stream_generator(seed, "split")
        )
        noise = stream_generator(seed, "label_noise")
        return Splits(
            train=noisy_split(x[train], y[train], self.label_noise, 10, noise),
            val=Split(x[val], y[val]),
            test=Split(x[test], y[test]),
            input=self.input,
            num_classes=10,
        )
