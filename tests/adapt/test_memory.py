"""AdaNPC and its k-NN memory: the vote on a hand case, scikit-learn's k-NN classifier when
nothing joins the memory, faiss == torch search, the eviction rule, growth and resume."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from heldout.adapt.memory import FAISS_FROM, AdaNPC, KNNMemory, knn_vote
from heldout.core.adapter import Source

torch.set_num_threads(1)
IN, CLASSES = 5, 3


def network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, 12), nn.Tanh(), nn.Linear(12, 8), nn.Linear(8, CLASSES))


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def test_vote_on_a_hand_computed_2d_case():
    # memory on the unit circle; query along (1, 0): similarities cos 0, cos 60°, cos 90°, -1
    memory = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    sims, near = KNNMemory(memory, labels, capacity=10, search="torch").search(
        torch.tensor([[1.0, 0.0]]), k=3)
    assert torch.allclose(sims, torch.tensor([[1.0, 0.5, 0.0]]), atol=1e-6)
    assert near.tolist() == [[0, 1, 1]]
    votes = knn_vote(sims, near, 2, tau=0.5)  # weights ∝ e², e¹, e⁰
    total = math.exp(2) + math.exp(1) + 1
    assert votes[0].tolist() == pytest.approx([math.exp(2) / total,
                                               (math.exp(1) + 1) / total], rel=1e-6)


def test_vote_rejects_bad_input():
    with pytest.raises(ValueError, match="tau"):
        knn_vote(torch.zeros(1, 2), torch.zeros(1, 2), 2, tau=0.0)
    with pytest.raises(ValueError, match="labels"):
        knn_vote(torch.zeros(1, 2), torch.zeros(1, 3), 2, tau=1.0)


@pytest.mark.parametrize("search", ["torch", "faiss"])
def test_without_growth_equals_sklearn_cosine_knn(search):
    net = network()
    x, y = data(200, seed=1)
    queries, _ = data(60, seed=2)
    k, tau = 7, 0.2
    adapter = AdaNPC(k=k, tau=tau, beta=1.5, search=search).bind(net, Source(x, y))
    scores = torch.cat([adapter(q) for q in queries.split(16)])
    assert adapter.test_share() == 0.0  # β above any confidence: nothing joined

    features = net[:-1]
    with torch.no_grad():
        train_f, query_f = features(x).double().numpy(), features(queries).double().numpy()
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1 - d) / tau))
    knn.fit(train_f, y.numpy())
    want = knn.predict_proba(query_f)
    np.testing.assert_allclose(scores.softmax(dim=1).double().numpy(), want, atol=1e-5)
    assert (scores.argmax(1).numpy() == knn.predict(query_f)).all()


def test_faiss_search_equals_torch_search_through_growth_and_eviction():
    g = torch.Generator().manual_seed(3)
    feats, labels = torch.randn(300, 16, generator=g), torch.randint(0, 4, (300,), generator=g)
    fast = KNNMemory(feats, labels, capacity=400, search="faiss")
    plain = KNNMemory(feats, labels, capacity=400, search="torch")
    for _ in range(4):  # 4 x 60 test entries: the last two additions evict
        new, new_labels = torch.randn(60, 16, generator=g), torch.randint(0, 4, (60,), generator=g)
        fast.add(new, new_labels)
        plain.add(new, new_labels)
        queries = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1)
        (s1, y1), (s2, y2) = fast.search(queries, 9), plain.search(queries, 9)
        assert torch.allclose(s1, s2, atol=1e-5) and torch.equal(y1, y2)
    assert len(fast) == len(plain) == 400 and torch.equal(fast.labels, plain.labels)


def test_eviction_is_fifo_over_test_entries_and_keeps_the_source():
    source = torch.eye(4)
    memory = KNNMemory(source, torch.arange(4), capacity=7, search="torch")
    memory.add(torch.ones(2, 4), torch.tensor([10, 11]))
    memory.add(torch.ones(2, 4), torch.tensor([12, 13]))  # 8 > 7: entry 10 goes
    assert memory.labels.tolist() == [0, 1, 2, 3, 11, 12, 13]
    memory.add(torch.ones(5, 4), torch.tensor([20, 21, 22, 23, 24]))  # only room for 3
    assert memory.labels.tolist() == [0, 1, 2, 3, 22, 23, 24]
    assert torch.equal(memory.features[:4], source)
    assert memory.test_share() == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match="capacity"):
        KNNMemory(source, torch.arange(4), capacity=3)


def test_confident_instances_join_and_the_share_grows():
    net = network()
    x, y = data(100, seed=1)
    adapter = AdaNPC(k=5, tau=0.1, beta=0.0, search="torch").bind(net, Source(x, y))
    shares = []
    for q in data(64, seed=5)[0].split(16):
        scores = adapter(q)
        shares.append(adapter.test_share())
    assert shares == [16 / 116, 32 / 132, 48 / 148, 64 / 164]
    # the admitted labels are the predictions of their batch
    assert torch.equal(adapter.memory.labels[-16:], scores.argmax(1))


def test_confidence_is_the_vote_share_not_its_softmax():
    """A 3-to-2 vote of 5 equally near neighbours has confidence 0.6, so β = 0.58 admits
    it; the official code's softmax of the vote, e^.6 / (e^.6 + e^.4) ≈ 0.55, would not."""
    net = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    source = Source(torch.tensor([[1.0, 0.0]] * 5), torch.tensor([0, 0, 0, 1, 1]))
    adapter = AdaNPC(k=5, beta=0.58, search="torch").bind(net, source)
    adapter(torch.tensor([[1.0, 0.0]]))
    assert adapter.test_share() == pytest.approx(1 / 6)


def test_resume_from_checkpoint_rebuilds_the_faiss_index():
    net = network()
    x, y = data(150, seed=1)
    batches = data(96, seed=7)[0].split(16)

    def bound() -> AdaNPC:
        return AdaNPC(k=9, beta=0.3, capacity=200, search="faiss").bind(net, Source(x, y))

    straight = bound()
    want = [straight(b) for b in batches]
    first = bound()
    for b in batches[:3]:
        first(b)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = bound()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.memory._index.ntotal == len(first.memory)
    for b, expected in zip(batches[3:], want[3:], strict=True):
        assert torch.equal(resumed(b), expected)


def test_without_faiss_torch_works_and_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    feats = torch.randn(FAISS_FROM, 2)
    labels = torch.zeros(FAISS_FROM, dtype=torch.long)
    auto = KNNMemory(feats, labels, capacity=FAISS_FROM)
    assert auto._index is None  # auto falls back to torch past FAISS_FROM
    assert auto.search(feats[:2], 3)[0].shape == (2, 3)
    with pytest.raises(ImportError, match=r"pip install heldout\[adapt\]"):
        KNNMemory(feats, labels, capacity=FAISS_FROM, search="faiss")


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="search"):
        KNNMemory(torch.eye(2), torch.arange(2), capacity=4, search="annoy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        AdaNPC(k=3).bind(network())


def test_auto_search_switches_to_faiss_when_the_memory_grows_past_the_threshold():
    feats = torch.randn(FAISS_FROM - 1, 2)
    memory = KNNMemory(feats, torch.zeros(len(feats), dtype=torch.long),
                       capacity=FAISS_FROM + 10)
    assert memory._index is None
    memory.add(torch.randn(3, 2), torch.ones(3, dtype=torch.long))
    assert memory._index is not None and memory._index.ntotal == len(memory) == FAISS_FROM + 2
