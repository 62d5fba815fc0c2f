"""XOR cluster data: four Gaussian clusters at ±μ1 and ±μ2 in high dimension, with label flips."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import resolve_seed

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

    # input dimension d (the theory needs d much larger than n_train)
    dim: Annotated[int, Ge(2)] = 2000
    n_train: Annotated[int, Ge(1)] = 100  # number of training examples n
    n_val: Annotated[int, Ge(0)] = 0  # number of validation examples (clean labels)
    n_test: Annotated[int, Ge(0)] = 1000  # number of test examples (clean labels)
    # squared norm ‖μ‖² of each cluster mean (the signal strength)
    mean_norm_sq: Annotated[float, Gt(0)] = 200.0
    # η: probability that a train label is flipped
    flip_probability: Annotated[float, Interval(0, 1)] = 0.15
    # if set, builds the data instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

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
