"""Atomic checkpoints, kept with the previous one, and RNG state capture.

A checkpoint is written to a temporary file in the same directory (its sha256 computed as it
is written), flushed to disk, then renamed into place; the checkpoint it replaces becomes
``<name>.prev<suffix>``. A process killed at any moment leaves whole checkpoints only, never
half of one. Loading verifies the file (against recorded digests when given, and by reading
it) and falls back to the previous checkpoint with a :class:`CheckpointWarning` when the
last one is corrupt, truncated or empty. Checkpoints hold only tensors and plain Python
values, so they load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heldout.core.digest import file_sha256

__all__ = ["CheckpointError", "CheckpointWarning", "capture_rng", "has_checkpoint",
           "load_checkpoint", "previous_checkpoint", "restore_rng", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """No usable checkpoint: one line naming the file(s) and the way out."""


class CheckpointWarning(UserWarning):
    """The last checkpoint was unusable; the previous one was loaded instead."""


class _HashingWriter:
    """A binary file that hashes what goes through it (so a checkpoint is read once)."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return int(self.handle.write(data))

    def flush(self) -> None:
        self.handle.flush()


def previous_checkpoint(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` → ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def has_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` or the checkpoint kept before it exists."""
    return Path(path).exists() or previous_checkpoint(path).exists()


def save_checkpoint(obj: dict[str, Any], path: str | Path, *, keep_previous: bool = True,
                    on_written: Callable[[str], None] | None = None) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file, fsync, rename), keeping the
    checkpoint it replaces as :func:`previous_checkpoint`. ``on_written(sha256)`` runs once
    the new file is complete and before it is renamed into place (to record its digest; if
    it raises, nothing is replaced). Temporary files of ``path`` that a killed process left
    behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):
        orphan.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(obj, writer)  # type: ignore[arg-type]  # any object with write()
            handle.flush()
            os.fsync(handle.fileno())
        if on_written is not None:
            on_written(writer.digest.hexdigest())
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path



def load_checkpoint(path: str | Path, *, digests: Collection[str] | None = None
                    ) -> dict[str, Any]:
    """Load the checkpoint at ``path`` (``weights_only=True``), or the one kept before it
    (with a :class:`CheckpointWarning`) when ``path`` is missing, unreadable or, given
    ``digests`` (the recorded sha256 of the run's checkpoints), matches none of them.
    Raises :class:`CheckpointError` when neither is usable (FileNotFoundError when neither
    exists)."""
    path = Path(path)
    candidates = (path, previous_checkpoint(path))
    if not any(c.exists() for c in candidates):
        raise FileNotFoundError(f"no checkpoint at {path}")
    problems = []
    for candidate in candidates:
        if not candidate.exists():
            problems.append(f"{candidate.name} is missing")
            continue
        if digests is not None and file_sha256(candidate) not in digests:
            problems.append(f"{candidate} does not match its recorded sha256")
            continue
        try:
            obj = dict(torch.load(candidate, map_location="cpu", weights_only=True))
        except Exception as err:  # noqa: BLE001 - truncated, empty, random bytes, a payload
            problems.append(f"{candidate} cannot be read ({type(err).__name__})")
            continue
        if candidate != path:
            warnings.warn(f"checkpoint {problems[0]}; using the previous one, {candidate}",
                          CheckpointWarning, stacklevel=2)
        return obj
    raise CheckpointError(f"no usable checkpoint: {'; '.join(problems)}; `--restart` "
                          "discards it and trains from step 0")


def capture_rng() -> dict[str, Any]:
    """The states of torch's, NumPy's and Python's global RNGs, as checkpointable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy form is a tuple of 5
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the global RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
