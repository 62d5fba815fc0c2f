"""Regression tasks: a single-index quadratic teacher (the lazy → rich grokking testbed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from heldout.core.bounds import Annotated, Ge
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import resolve_seed

__all__ = ["SingleIndexQuadratic"]


@TASKS.register(
    "single_index",
    summary="Regression y = (β·x/√D)² on Gaussian inputs: a single-index quadratic teacher.",
    papers=(11,),
)
@dataclass(frozen=True)
class SingleIndexQuadratic(Task):
    """x ~ N(0, I_D), y = (β·x / √D)² with β ~ N(0, I_D) drawn once from the seed.

    The targets are floats of shape ``(N, 1)``, so heldout trains on the mean squared error
    and reports ``loss`` as MSE. With D < P < D² the initial kernel cannot fit the target but
    feature learning can: the setting of Kumar et al., "Grokking as the Transition from Lazy
    to Rich Training Dynamics" (arXiv:2310.06110), as in their notebooks (D = 100, P = 550).
    """

    dim: Annotated[int, Ge(1)] = 100  # D, the input dimension
    n_train: Annotated[int, Ge(1)] = 550  # P, training points
    n_val: Annotated[int, Ge(0)] = 0  # validation points
    n_test: Annotated[int, Ge(1)] = 1000  # test points
    data_seed: int | None = None  # overrides the run's seed for the data

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (self.dim,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        beta = torch.randn(self.dim, generator=stream_generator(seed, "teacher"))

        def sample(count: int, stream: str) -> Split:
            x = torch.randn(count, self.dim, generator=stream_generator(seed, stream))
            y = ((x @ beta) / math.sqrt(self.dim)).pow(2).unsqueeze(-1)
            return Split(x, y)

        return Splits(train=sample(self.n_train, "train"), val=sample(self.n_val, "val"),
                      test=sample(self.n_test, "test"), input=self.input, num_classes=1)
