"""Small tabular tasks from scikit-learn (offline): breast cancer and two moons."""

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
from heldout.tasks.splitting import import_optional, resolve_seed, stratified_partition

__all__ = ["BreastCancer", "Moons"]


@functools.cache
def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    datasets = import_optional("sklearn.datasets")
    x, y = datasets.load_breast_cancer(return_X_y=True)
    return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


@TASKS.register(
    "breast_cancer",
    summary="scikit-learn's breast-cancer table (569 x 30, binary), standardized, stratified "
    "split.",
    papers=(35,),
)
@dataclass(frozen=True)
class BreastCancer(Task):
    """The Wisconsin diagnostic breast-cancer table bundled with scikit-learn: 569 rows, 30
    features, 2 classes. A stratified split by the seed; features standardized with the
    training split's mean and standard deviation. One of the small tabular stand-ins for
    GBNN's benchmarks (Emami & Martínez-Muñoz, arXiv:1909.12098)."""

    # fraction of each class held out as test
    test_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.3
    # fraction of each class held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.0
    data_seed: int | None = None  # overrides the run's seed for the split

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (30,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        x, y = map(torch.from_numpy, _breast_cancer())
        test, val, train = stratified_partition(
            y, (self.test_fraction, self.val_fraction), stream_generator(seed, "split"))
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
        x = (x - mean) / std
        return Splits(Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test]),
                      self.input, num_classes=2)


@TASKS.register(
    "moons",
    summary="Two interleaving half-moons with Gaussian noise (scikit-learn's make_moons).",
    papers=(35,),
)
@dataclass(frozen=True)
class Moons(Task):
    """scikit-learn's ``make_moons``: 2-D points on two interleaving half circles plus
    Gaussian noise, 2 classes; train, val and test drawn independently from seeded streams
    (GBNN's decision-boundary example uses 200 training points and noise 0.3)."""

    n_train: Annotated[int, Ge(2)] = 200  # training points
    n_val: Annotated[int, Ge(0)] = 0  # validation points
    n_test: Annotated[int, Ge(2)] = 1000  # test points
    noise: Annotated[float, Ge(0)] = 0.3  # standard deviation of the Gaussian noise
    data_seed: int | None = None  # overrides the run's seed for the data

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (2,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        datasets = import_optional("sklearn.datasets")

        def sample(count: int, stream: str) -> Split:
            if count == 0:
                return Split(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
            state = int(torch.randint(0, 2**31 - 1, (1,),
                                      generator=stream_generator(seed, stream)))
            x, y = datasets.make_moons(count, noise=self.noise, random_state=state)
            return Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y))

        return Splits(sample(self.n_train, "train"), sample(self.n_val, "val"),
                      sample(self.n_test, "test"), self.input, num_classes=2)
