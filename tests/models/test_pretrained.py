"""The pre-trained text models: MiniLM loads offline and matches sentence-transformers."""

import socket

import pytest
import torch

from heldout.core.adapter import split_head
from heldout.core.inputs import InputSpec
from heldout.models.embedding_cache import EmbeddingCache
from heldout.registry import MODELS

pytest.importorskip("transformers")
from heldout.models.pretrained import PAD_ID, minilm_path, tokenize, tokenizer  # noqa: E402

SENTENCES = ["The committee noted that rainfall remained significant.",
             "lol did u see the game today",
             "Wireless Headphones Surge As Startup Returns"]
TOKENS = InputSpec("tokens", (32,), vocab=30522)


def _no_network(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture(scope="module")
def minilm():
    """One frozen MiniLM for the module, built with every socket connection refused."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket.socket, "connect_ex", _no_network)
        patch.delenv("HF_HUB_OFFLINE", raising=False)
        patch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        torch.manual_seed(0)
        model = MODELS.build("minilm", mode="frozen").build(TOKENS, 4)
        model.eval()
        # runs offline too
        out = model(tokenize(SENTENCES, 32))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    return model


def test_tokenize_round_trips():
    ids = tokenize(SENTENCES, 32)
    assert ids.shape == (3, 32) and ids.dtype == torch.long
    assert bool((ids[:, 0] == tokenizer().cls_token_id).all())
    for sentence, row in zip(SENTENCES, ids, strict=True):
        assert tokenizer().decode(row, skip_special_tokens=True) == sentence.lower()
        length = int((row != PAD_ID).sum())
        assert int(row[length - 1]) == tokenizer().sep_token_id
        assert bool((row[length:] == PAD_ID).all())
    assert tokenize(["word " * 100], 8).shape == (1, 8)  # truncated


def test_minilm_matches_sentence_transformers(minilm):
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling, L2 normalization)."""
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(
        SENTENCES, convert_to_tensor=True)
    ours = torch.nn.functional.normalize(minilm.features(tokenize(SENTENCES, 64)), dim=-1)
    cosine = torch.nn.functional.cosine_similarity(ours, reference.cpu().float(), dim=-1)
    assert bool((cosine > 0.999).all()), cosine


def test_frozen_mode_trains_the_head_only(minilm):
    minilm.train()
    try:
        minilm.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(minilm(tokenize(SENTENCES, 32)),
                                                 torch.tensor([0, 1, 2]))
        loss.backward()
    finally:
        minilm.eval()
    assert all(p.grad is None for p in minilm.encoder.parameters())
    assert minilm.head.weight.grad is not None and minilm.head.weight.grad.abs().sum() > 0
    assert minilm.encoder_frozen


def test_frozen_features_are_the_eval_features_and_the_cache_returns_them(minilm, tmp_path):
    ids = tokenize(SENTENCES, 32)
    minilm.embedding_cache = None
    with torch.no_grad():
        expected = minilm.encode(minilm.embed(ids), ids != PAD_ID)  # eval mode: no dropout
    minilm.train()  # a frozen encoder stays a fixed feature map while the head trains
    try:
        assert torch.equal(minilm.features(ids), expected)
        minilm.embedding_cache = EmbeddingCache(tmp_path)
        assert torch.equal(minilm.features(ids), expected)  # computed, stored
        assert torch.equal(minilm.features(ids[[2, 0]]), expected[[2, 0]])  # read back
        assert (minilm.embedding_cache.misses, minilm.embedding_cache.hits) == (3, 2)
    finally:
        minilm.eval()
        minilm.embedding_cache = None


def test_split_head_finds_the_featurizer(minilm):
    featurizer, head = split_head(minilm)
    ids = tokenize(SENTENCES, 32)
    assert head is minilm.head
    assert torch.equal(featurizer(ids), minilm.features(ids))
    assert torch.allclose(head(featurizer(ids)), minilm(ids))


@pytest.mark.parametrize("name", ["minilm", "tiny_bert"])
@pytest.mark.parametrize("spec", [InputSpec("continuous", (64,)),
                                  InputSpec("tokens", (2, 8), vocab=10)])
def test_non_token_inputs_are_refused(name, spec):
    with pytest.raises(ValueError, match="token ids"):
        MODELS.build(name).build(spec, 3)

