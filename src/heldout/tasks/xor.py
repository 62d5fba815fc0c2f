"""XOR cluster data: four Gaussian clusters at ±μ1 and ±μ2 in high dimension, with label flips."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import check_range, resolve_seed

__all__ = ["XORClusters"]


@TASKS.register(
    "xor_clusters",
    summary="XOR of Gaussian clusters at ±μ1 (class 0) and ±μ2 (class 1); train labels flipped.",
    papers=(15,),
)
@dataclass(frozen=True)
class XORClusters(Task):
    """High-dimensional XOR cluster data with flipped training labels.

    Two orthogonal means ``μ1 ⊥ μ2`` with ``‖μ1‖² = ‖μ2‖² = mean_norm_sq`` (a random orthonormal
    pair from the seed, scaled). Each example picks a cluster mean uniformly from
    ``{+μ1, −μ1, +μ2, −μ2}`` and is ``x = mean + N(0, I_dim)``; its clean class is 0 for ±μ1 and
    1 for ±μ2, which no linear classifier separates. Each train label is flipped independently
    with probability ``flip_probability`` (η); ``clean_y`` keeps the true ones. Val and test
    labels are clean. The means, each split and the flips draw from separate random streams.

    References:
        Xu, Wang, Frei, Vardi, Hu. Benign Overfitting and Grokking in ReLU Networks for XOR
        Cluster Data. arXiv:2310.02541. The defaults (d=2000, n=100, ‖μ‖²=200, η=0.15) are the
        calibrated CPU setting of claims-ledger C3, not values from the paper.

    Example:
        >>> splits = XORClusters(dim=10, n_train=8, n_test=4).splits(seed=0)
        >>> tuple(splits.train.x.shape), splits.num_classes
        ((8, 10), 2)
    """

    dim: int = 2000  # input dimension d (the theory needs d much larger than n_train)
    n_train: int = 100  # number of training examples n
    n_val: int = 0  # number of validation examples (clean labels)
    n_test: int = 1000  # number of test examples (clean labels)
    mean_norm_sq: float = 200.0  # squared norm ‖μ‖² of each cluster mean (the signal strength)
    flip_probability: float = 0.15  # η: probability that a train label is flipped
    data_seed: int | None = None  # if set, builds the data instead of the run's seed

    def __post_init__(self) -> None:
        check_range("dim", self.dim, 2)
        check_range("n_train", self.n_train, 1)
        check_range("n_val", self.n_val, 0)
        check_range("n_test", self.n_test, 0)
        check_range("mean_norm_sq", self.mean_norm_sq, 0, low_open=True)
        check_range("flip_probability", self.flip_probability, 0, 1)
        if self.data_seed is not None:
            check_range("data_seed", self.data_seed, 0)

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (self.dim,))

    def cluster_means(self, seed: int) -> Tensor:
        """The two means ``μ1, μ2`` the splits of ``seed`` use, as rows of a ``(2, dim)`` tensor."""
        return self._means(resolve_seed(seed, self.data_seed))

    def _means(self, data_seed: int) -> Tensor:
        generator = stream_generator(data_seed, "means")
        first, second = torch.randn(2, self.dim, generator=generator, dtype=torch.float64)
        first = first / first.norm()
        second = second - (second @ first) * first  # Gram-Schmidt: no LAPACK sign conventions
        second = second / second.norm()
        return (torch.stack([first, second]) * math.sqrt(self.mean_norm_sq)).float()

    def _sample(
        self, means: Tensor, count: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        cluster = torch.randint(0, 4, (count,), generator=generator)
        labels = cluster // 2  # clusters 0, 1 are ±μ1 (class 0); 2, 3 are ±μ2 (class 1)
        signs = 1.0 - 2.0 * (cluster % 2).float()
        noise = torch.randn(count, self.dim, generator=generator)
        return signs[:, None] * means[labels] + noise, labels

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        means = self._means(seed)
        train_x, train_clean = self._sample(means, self.n_train, stream_generator(seed, "train"))
        val_x, val_y = self._sample(means, self.n_val, stream_generator(seed, "val"))
        test_x, test_y = self._sample(means, self.n_test, stream_generator(seed, "test"))
        if self.flip_probability > 0:
            flip_draws = torch.rand(self.n_train, generator=stream_generator(seed, "flips"))
            flipped = flip_draws < self.flip_probability
            train = Split(train_x, torch.where(flipped, 1 - train_clean, train_clean), train_clean)
        else:
            train = Split(train_x, train_clean)
        return Splits(
            train=train,
            val=Split(val_x, val_y),
            test=Split(test_x, test_y),
            input=self.input,
            num_classes=2,
        )
