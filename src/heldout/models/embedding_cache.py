"""An on-disk cache of a frozen encoder's features, so frozen-encoder experiments embed once.

A row of token ids is embedded once per *encoder state*: the key of a row is the SHA-256 of
its ids (shape and dtype included) inside a namespace that digests everything the features
depend on — the encoder's weights and buffers (their bytes, so two runs that load the same
pre-trained weights share entries and a changed weight never reads a stale one), the device
type and the dtype. Entries are one ``.npy`` file per row under
``<directory>/<namespace>/<key[:2]>/<key>.npy``, written to a temporary file and renamed into
place (atomic on POSIX), so processes may share the directory: the worst a race does is embed
a row twice.

The weights' digest is recomputed only when a parameter or buffer was changed in place (torch's
per-tensor version counters) or replaced, so a lookup costs a hash of the batch's rows.

Example:
    >>> import tempfile
    >>> encoder = torch.nn.Embedding(10, 3)
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> ids = torch.tensor([[1, 2], [3, 4]])
    >>> embed = lambda rows: encoder(rows).mean(1)
    >>> first = cache.features(encoder, ids, embed)
    >>> cache.misses, bool(torch.equal(cache.features(encoder, ids, embed), first)), cache.hits
    (2, True, 2)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["EmbeddingCache", "default_cache_dir", "module_digest"]


def default_cache_dir() -> Path:
    """``$HELDOUT_CACHE/embeddings``, else ``~/.cache/heldout/embeddings``."""
    configured = os.environ.get("HELDOUT_CACHE")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "heldout"
    return root / "embeddings"


def _versions(module: nn.Module) -> tuple[tuple[str, int, int], ...]:
    return tuple((name, id(t), t._version) for name, t in module.state_dict(keep_vars=True)
                 .items())


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (every tensor's name, dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _row_keys(input_ids: Tensor) -> list[str]:
    rows = input_ids.detach().cpu().long().contiguous()
    prefix = f"{tuple(rows.shape[1:])}".encode()
    return [hashlib.sha256(prefix + row.numpy().tobytes()).hexdigest() for row in rows]


class EmbeddingCache:
    """Features of token-id rows by a frozen encoder, stored on disk (see the module).

    ``features(encoder, input_ids, compute)`` returns ``compute(input_ids)`` row for row,
    reading the rows it has seen before and calling ``compute`` on the missing ones only
    (one call, in their order). ``compute`` must be deterministic and row-wise (a row's
    features do not depend on the other rows of its batch); the caller runs it in eval mode
    under ``torch.no_grad()``. ``hits`` and ``misses`` count rows.
    """

    def __init__(self, directory: str | Path | None = None, tag: str = "") -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.tag = tag  # extra namespace text (e.g. the model's name)
        self.hits = 0
        self.misses = 0
        self._digests: dict[int, tuple[tuple[tuple[str, int, int], ...], str]] = {}

    def namespace(self, encoder: nn.Module, dtype: torch.dtype, device: torch.device) -> str:
        """The key of everything the features depend on besides the row."""
        versions = _versions(encoder)
        known = self._digests.get(id(encoder))
        if known is None or known[0] != versions:
            known = (versions, module_digest(encoder))
            self._digests[id(encoder)] = known
        text = f"{self.tag}|{known[1]}|{device.type}|{dtype}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _path(self, namespace: str, key: str) -> Path:
        return self.directory / namespace / key[:2] / f"{key}.npy"

    def features(self, encoder: nn.Module, input_ids: Tensor,
                 compute: Callable[[Tensor], Tensor]) -> Tensor:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (N, L) token ids, got shape "
                             f"{tuple(input_ids.shape)}")
        reference = next(iter(encoder.parameters()))
        namespace = self.namespace(encoder, reference.dtype, reference.device)
        keys = _row_keys(input_ids)
        found: dict[int, Tensor] = {}
        for i, key in enumerate(keys):
            path = self._path(namespace, key)
            if path.is_file():
                found[i] = torch.from_numpy(np.load(path, allow_pickle=False))
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        computed = None
        if missing:
            computed = compute(input_ids[missing])
            for row, i in enumerate(missing):
                self._write(self._path(namespace, keys[i]), computed[row])
        if computed is not None and not found:
            return computed
        width = computed.shape[1:] if computed is not None else next(iter(found.values())).shape
        dtype = computed.dtype if computed is not None else reference.dtype
        out = torch.empty((len(keys), *width), dtype=dtype, device=reference.device)
        for i, value in found.items():
            out[i] = value.to(out.device, out.dtype)
        if computed is not None:
            out[missing] = computed
        return out

    @staticmethod
    def _write(path: Path, value: Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, value.detach().cpu().numpy(), allow_pickle=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
