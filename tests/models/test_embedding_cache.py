"""The embedding cache: cached features equal computed ones, and never go stale."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heldout.core.inputs import InputSpec
from heldout.models.embedding_cache import EmbeddingCache, module_digest
from heldout.registry import MODELS

pytest.importorskip("transformers")

TOKENS = InputSpec("tokens", (12,), vocab=30522)


def _ids(rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (rows, 12), generator=generator)
    lengths = torch.randint(3, 13, (rows,), generator=generator)
    ids[torch.arange(12) >= lengths[:, None]] = 0  # padded
    ids[:, 0] = 101
    return ids


def _frozen(seed: int = 0, dropout: float = 0.2):
    torch.manual_seed(seed)
    return MODELS.build("tiny_bert", mode="frozen", dropout=dropout).build(TOKENS, 3)


def _reference(model, ids):
    """Features by the encoder itself: eval mode, no cache."""
    model.eval()
    with torch.no_grad():
        return model.encode(model.embed(ids), ids != 0)


def test_cached_features_equal_computed_and_only_missing_rows_are_embedded(tmp_path):
    model = _frozen()
    ids = _ids(10)
    expected = _reference(model, ids)
    calls = []
    cache = EmbeddingCache(tmp_path)

    def compute(rows):
        calls.append(len(rows))
        return model.encode(model.embed(rows), rows != 0)

    with torch.no_grad():  # the caller runs the encoder in eval mode
        assert torch.equal(cache.features(model.encoder, ids[:6], compute), expected[:6])
        mixed = ids[[7, 2, 8, 0]]  # two new rows, two known
        assert torch.equal(cache.features(model.encoder, mixed, compute), expected[[7, 2, 8, 0]])
        assert torch.equal(cache.features(model.encoder, ids, compute), expected)
    assert calls == [6, 2, 2]
    assert (cache.hits, cache.misses) == (2 + 8, 6 + 2 + 2)
    # through the model's own features(), in train mode: the frozen encoder runs in eval mode
    model.train()
    model.embedding_cache = EmbeddingCache(tmp_path)
    assert torch.equal(model.features(ids[[9, 1]]), expected[[9, 1]])
    assert model.embedding_cache.hits == 2
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files
    assert len(list(tmp_path.rglob("*.npy"))) == 10


def test_a_changed_encoder_never_reads_stale_features(tmp_path):
    model = _frozen()
    model.embedding_cache = EmbeddingCache(tmp_path)
    ids = _ids(4)
    before = model.features(ids)
    with torch.no_grad():
        model.encoder.embeddings.word_embeddings.weight[1000:2000] *= 2  # in place
    after = model.features(ids)
    assert model.embedding_cache.misses == 8 and not torch.equal(after, before)
    model.embedding_cache = None
    assert torch.equal(model.features(ids), after)
    # another model loaded with the same weights shares the entries; a differently
    # initialized one does not
    same, other = _frozen(seed=0), _frozen(seed=1)
    assert module_digest(same.encoder) == module_digest(_frozen(seed=0).encoder)
    for candidate, hits in ((same, 4), (other, 0)):
        candidate.embedding_cache = EmbeddingCache(tmp_path)
        assert torch.equal(candidate.features(ids), _reference(candidate, ids))
        assert candidate.embedding_cache.hits == hits
    # another dtype is another namespace
    double = _frozen(seed=0).double()
    double.embedding_cache = EmbeddingCache(tmp_path)
    assert double.features(ids).dtype == torch.float64 and double.embedding_cache.hits == 0


def test_a_training_encoder_bypasses_the_cache(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build("tiny_bert", mode="full", dropout=0.0).build(TOKENS, 3)
    model.embedding_cache = EmbeddingCache(tmp_path)
    ids = _ids(3)
    features = model.features(ids)
    assert features.requires_grad  # gradients reach the encoder
    assert (model.embedding_cache.hits, model.embedding_cache.misses) == (0, 0)
    assert not model.encoder_frozen


def test_another_process_reads_the_entries(tmp_path):
    """A second process embeds nothing: every row is read from the shared directory."""
    model = _frozen(dropout=0.0)
    ids = _ids(5)
    torch.save({"state": model.state_dict(), "ids": ids}, tmp_path / "setup.pt")
    script = f"""
import torch
from heldout.core.inputs import InputSpec
from heldout.models.embedding_cache import EmbeddingCache
from heldout.registry import MODELS
setup = torch.load({str(tmp_path / 'setup.pt')!r})
model = MODELS.build("tiny_bert", mode="frozen", dropout=0.0).build(
    InputSpec("tokens", (12,), vocab=30522), 3)
model.load_state_dict(setup["state"])
model.embedding_cache = EmbeddingCache({str(tmp_path / 'cache')!r})
torch.save(model.features(setup["ids"]), {str(tmp_path / 'features.pt')!r})
"""
    env = {"PYTHONPATH": str(Path(__file__).parents[2] / "src"), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    model.embedding_cache = EmbeddingCache(tmp_path / "cache")
    mine = model.features(ids)
    assert model.embedding_cache.hits == 5 and model.embedding_cache.misses == 0
    assert torch.equal(mine, torch.load(tmp_path / "features.pt"))
    assert torch.equal(mine, _reference(model, ids))


def test_bad_input_is_refused(tmp_path):
    model = _frozen()
    with pytest.raises(ValueError, match="input_ids"):
        EmbeddingCache(tmp_path).features(model.encoder, torch.ones(3, dtype=torch.long),
                                          model.features)
