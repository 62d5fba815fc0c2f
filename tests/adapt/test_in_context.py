"""The k-NN in-context learner: its vote against scikit-learn's cosine k-NN, the context
examples as queries, deterministic context sampling, and MiniLM-shaped text features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from heldout.adapt.in_context import KNNInContext, cosine_knn_scores, sample_context
from heldout.core.inputs import InputSpec
from heldout.models.pretrained import tokenize
from heldout.registry import ADAPTERS, MODELS

SENTENCES = [
    "the committee report on rainfall in the northern valley",
    "lol the match last night was wild",
    "markets rally as chip makers beat forecasts",
    "this blender is loud but it works great",
    "new vaccine trial shows strong early results",
    "anyone know a good recipe for lentil soup",
]


def embeddings(seed: int, n: int, dim: int = 8) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("weighting", ["similarity", "uniform"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_scikit_learn_cosine_knn(weighting, k):
    context, query = embeddings(0, 40), embeddings(1, 25)
    labels = torch.arange(40) % 4
    scores = cosine_knn_scores(context, labels, query, k, weighting=weighting)
    weights = "uniform" if weighting == "uniform" else (lambda d: 1.0 - d)  # cos = 1 − d
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=weights).fit(context.numpy(), labels.numpy())
    np.testing.assert_array_equal(scores.argmax(1).numpy(), knn.predict(query.numpy()))
    if weighting == "uniform":  # the votes are k times scikit-learn's class probabilities
        np.testing.assert_allclose(scores.numpy() / k, knn.predict_proba(query.numpy()))


def test_hand_computed_vote():
    context = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores = cosine_knn_scores(context, torch.tensor([0, 1, 1]), torch.tensor([[2.0, 1.0]]), 2,
                               num_classes=3)
    # cos to the rows: 2/√5, 1/√5, 3/√10; the two nearest are rows 2 (class 1) and 0 (class 0)
    expected = torch.tensor([[2 / 5**0.5, 3 / 10**0.5, 0.0]])
    torch.testing.assert_close(scores, expected)


def test_queries_equal_to_the_context_get_their_labels():
    torch.manual_seed(0)
    spec = InputSpec("tokens", (16,), vocab=30522)
    model = MODELS.build("tiny_bert", mode="frozen").build(spec, 6).eval()
    ids = tokenize(SENTENCES, max_length=16)
    labels = torch.tensor([3, 1, 0, 5, 2, 4])
    learner = ADAPTERS.build("knn_in_context", neighbours=1).bind(model)
    scores = learner(ids, support_x=ids, support_y=labels)
    assert torch.equal(scores.argmax(1), labels)
    # the scores are the k-NN vote of the model's own pooled features
    with torch.no_grad():
        features = model.features(ids)
    torch.testing.assert_close(scores, cosine_knn_scores(features, labels, features, 1))


def test_sample_context_is_deterministic_and_per_class():
    labels = torch.arange(60) % 5
    a = sample_context(labels, 3, torch.Generator().manual_seed(7))
    b = sample_context(labels, 3, torch.Generator().manual_seed(7))
    c = sample_context(labels, 3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(labels[a], minlength=5).tolist() == [3] * 5
    assert len(torch.unique(a)) == len(a)
    total = sample_context(labels, 4, torch.Generator().manual_seed(0), per_class=False)
    assert len(total) == 4 and len(torch.unique(total)) == 4
    few = sample_context(torch.tensor([0, 0, 1]), 5, torch.Generator().manual_seed(0))
    assert few.tolist() == [0, 1, 2]  # a class with fewer examples gives all it has


def test_the_context_changes_the_prediction():
    net = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    learner = KNNInContext(net, neighbours=1)
    query = torch.tensor([[1.0, 0.1]])
    context = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    first = learner(query, support_x=context, support_y=torch.tensor([0, 1])).argmax(1)
    swapped = learner(query, support_x=context, support_y=torch.tensor([1, 0])).argmax(1)
    assert first.item() == 0 and swapped.item() == 1


@pytest.mark.parametrize("call, match", [
    (lambda: cosine_knn_scores(torch.ones(2, 3), torch.tensor([0, 1]), torch.ones(1, 4), 1),
     "features"),
    (lambda: cosine_knn_scores(torch.ones(2, 3), torch.tensor([0]), torch.ones(1, 3), 1),
     "context_y"),
    (lambda: cosine_knn_scores(torch.ones(2, 3), torch.tensor([0, 1]), torch.ones(1, 3), 0),
     "k must"),
    (lambda: cosine_knn_scores(torch.ones(2, 3), torch.tensor([0, 2]), torch.ones(1, 3), 1,
                               num_classes=2), "num_classes"),
    (lambda: sample_context(torch.tensor([0, 1]), 0, torch.Generator()), "shots"),
    (lambda: KNNInContext(weighting="cosine"), "weighting"),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_refuses_a_call_without_a_context():
    learner = KNNInContext(nn.Sequential(nn.Identity(), nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="support_x"):
        learner(torch.ones(1, 2))
