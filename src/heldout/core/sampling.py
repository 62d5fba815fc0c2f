"""Seeded sampling that never touches a global RNG: named random streams of a seed, and a fixed
subset of indices."""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["sample_indices", "stream_generator"]


def stream_generator(seed: int, stream: str, device: torch.device | str | None = None
                     ) -> torch.Generator:
    """A ``torch.Generator`` for one named random stream of ``seed`` (on ``device``; the
    CPU by default).

    Each use of randomness in a task (the split, the label noise, ...) draws from its own stream,
    so changing one parameter (say the noise rate) leaves the other draws (the split) unchanged.
    The stream name is mapped to a NumPy ``SeedSequence`` spawn key, never to a global RNG.

    Example:
        >>> a = torch.rand(2, generator=stream_generator(0, "split"))
        >>> b = torch.rand(2, generator=stream_generator(0, "split"))
        >>> c = torch.rand(2, generator=stream_generator(0, "noise"))
        >>> bool((a == b).all()), bool((a == c).any())
        (True, False)
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(stream.encode()),))
    state = int(sequence.generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device or "cpu").manual_seed(state)


def sample_indices(n: int, size: int, seed: int) -> Tensor:
    """``min(size, n)`` distinct indices out of ``n``, fixed by ``seed``, in increasing order.

    Example:
        >>> sample_indices(5, 10, seed=0).tolist()
        [0, 1, 2, 3, 4]
        >>> bool((sample_indices(100, 7, seed=3) == sample_indices(100, 7, seed=3)).all())
        True
    """
    if size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values
