"""MNIST-1D: 40-point 1-D signals of the ten digits, generated locally and cached as .npz."""

from __future__ import annotations

import functools
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    random_partition,
    resolve_seed,
    split_counts,
)

__all__ = ["MNIST1D", "cache_dir", "mnist1d_arrays"]

_CACHE_FORMAT = 1  # bump when the stored arrays change meaning, so stale files are not reused


def cache_dir() -> Path:
    """Where generated data sets are cached: ``$HELDOUT_CACHE``, else ``~/.cache/heldout``."""
    configured = os.environ.get("HELDOUT_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "heldout"


def _generate(num_samples: int, dataset_seed: int) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` with the global RNG streams saved and restored.

    ``make_dataset`` reseeds Python's ``random`` and NumPy's global RNG; restoring them leaves
    the caller's random streams exactly where they were.
    """
    mnist1d_data = import_optional("mnist1d.data")
    args = mnist1d_data.get_dataset_args()
    args.num_samples = num_samples
    args.seed = dataset_seed
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = mnist1d_data.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


@functools.cache
def _load(num_samples: int, dataset_seed: int, directory: Path) -> dict[str, np.ndarray]:
    path = directory / f"mnist1d_n{num_samples}_seed{dataset_seed}_v{_CACHE_FORMAT}.npz"
    if path.exists():
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
    else:
        arrays = _generate(num_samples, dataset_seed)
        directory.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: a reader never sees half a
        # file, and two processes generating at once both end with a complete one.
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)  # type: ignore[arg-type]  # mypy matches **arrays to allow_pickle
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    for array in arrays.values():
        array.flags.writeable = False  # shared by every caller in this process
    return arrays


def mnist1d_arrays(num_samples: int = 5000, dataset_seed: int = 42) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays ``x, y`` (generator's train part) and ``x_test, y_test``.

    Generated once with ``mnist1d.data.make_dataset`` (its defaults apart from ``num_samples``
    and ``seed``: an 80/20 train/test split), then read from the .npz cache under
    :func:`cache_dir` and kept in memory. The arrays are read-only.
    """
    return _load(num_samples, dataset_seed, cache_dir())


@TASKS.register(
    "mnist1d",
    summary="MNIST-1D: ten digit templates as 40-point 1-D signals, generated locally.",
)
@dataclass(frozen=True)
class MNIST1D(Task):
    """MNIST-1D classification: ten classes of 40-point signals built from digit templates.

    The data comes from ``mnist1d.data.make_dataset`` with the package defaults (templates
    padded, scaled, translated, sheared and noised; the whole set z-scored) and generator seed
    ``dataset_seed``. Its test part (the last 20%) is the test split; ``round(val_fraction *
    n)`` random examples of its train part, chosen by the run seed, are the val split. Then
    ``round(label_noise * n_train)`` random train labels are replaced by a random different
    class (``clean_y`` keeps the true ones). ``max_train`` keeps only the first training
    examples (the local-complexity paper trains on 1,000).

    References:
        Greydanus, Kobak. Scaling down Deep Learning with MNIST-1D. arXiv:2011.14439.

    Example:
        >>> splits = MNIST1D(num_samples=500).splits(seed=0)
        >>> tuple(splits.train.x.shape), len(splits.val), len(splits.test)
        ((360, 40), 40, 100)
    """

    # examples generated (train + test), rounded down to a multiple of 10
    num_samples: Annotated[int, Ge(10)] = 5000
    # seed of the MNIST-1D generator (42 is the published data set)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42
    # fraction of the generator's train part held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.1
    # fraction of train labels replaced by a different class
    label_noise: Annotated[float, Interval(0, 1)] = 0.0
    # keep only the first max_train training examples
    max_train: Annotated[int | None, Ge(1)] = None
    # if set, splits and corrupts instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        arrays = mnist1d_arrays(self.num_samples, self.dataset_seed)
        x, y = torch.tensor(arrays["x"]), torch.tensor(arrays["y"])
        val, train = random_partition(
            len(y), split_counts(len(y), (self.val_fraction,)), stream_generator(seed, "split")
        )
        if self.max_train is not None:
            train = train[: self.max_train]
        noise = stream_generator(seed, "label_noise")
        return Splits(
            train=noisy_split(x[train], y[train], self.label_noise, 10, noise),
            val=Split(x[val], y[val]),
            test=Split(torch.tensor(arrays["x_test"]), torch.tensor(arrays["y_test"])),
            input=self.input,
            num_classes=10,
        )
