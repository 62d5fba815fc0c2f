"""Origin identification: retrieval mAP against scikit-learn and hand-ranked cases, the
closed-form linear map on a known transform, and the map's gain on the generated task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from heldout.measures.origin import (
    average_precision,
    encoder_features,
    fit_linear_map,
    origin_identification,
    retrieval_map,
)
from heldout.registry import MODELS, TASKS


def test_identical_embeddings_give_map_one():
    gallery = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    assert retrieval_map(gallery, gallery, torch.arange(30)) == 1.0
    assert retrieval_map(3.0 * gallery[:5], gallery, torch.arange(5)) == 1.0  # cosine: scale-free


def test_hand_ranked_case():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    # cosine ranking for [1, 0.1]: row 0 (0.995), row 2 (0.777), row 1 (0.0995)
    # query 0's origin is row 2 (rank 2, AP 1/2); query 1's is row 1 (rank 3, AP 1/3)
    assert retrieval_map(queries, gallery, torch.tensor([2, 1])) == pytest.approx(5 / 12)
    relevance = torch.tensor([[True, True, False], [False, True, True]])
    # query 0: hits at ranks 1 and 3: (1 + 2/3) / 2; query 1: ranks 2 and 3: (1/2 + 2/3) / 2
    assert retrieval_map(queries, gallery, relevance) == pytest.approx(
        ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_scikit_learn_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    relevant = torch.rand(40, generator=g) < 0.3
    relevant[0] = True
    expected = average_precision_score(relevant.numpy(), scores.numpy())
    assert average_precision(scores, relevant) == pytest.approx(expected)


def test_least_squares_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fit_linear_map(x, x @ w), w)
    # ridge: the normal equations, checked against numpy's solver
    ridge = fit_linear_map(x, x @ w, ridge=2.0).numpy()
    xn = x.numpy()
    np.testing.assert_allclose(ridge, np.linalg.solve(xn.T @ xn + 2 * np.eye(6), xn.T @ xn @
                                                      w.numpy()))


def test_the_map_undoes_a_linear_distortion():
    g = torch.Generator().manual_seed(2)
    origins = torch.randn(40, 5, generator=g)
    distortion = torch.randn(5, 5, generator=g)
    generated = origins @ distortion
    result = origin_identification(generated[:20], origins[:20], generated[20:], origins,
                                   torch.arange(20, 40), ridge=0.0)
    assert result.map_with == pytest.approx(1.0) and result.map_without < 1.0


def test_the_map_helps_on_the_generated_task():
    # the default task (200 origins: 300 training pairs for 32 features); with fewer pairs
    # (120 origins) the random tiny encoder's map overfits and loses to the raw embeddings
    task = TASKS.build("origin_pairs")
    splits = task.splits(0)
    torch.manual_seed(0)
    model = MODELS.build("tiny_bert", mode="frozen").build(splits.input, splits.num_classes)
    train, test = encoder_features(model, splits.train.x), encoder_features(model, splits.test.x)
    origins = encoder_features(model, splits.extra["origins"].x)
    result = origin_identification(train, origins[splits.train.y], test, origins,
                                   splits.test.y, ridge=1e-3)
    assert result.map_with >= result.map_without
    assert 1 / 200 < result.map_without < 1.0


@pytest.mark.slow
def test_the_map_helps_with_minilm():
    splits = TASKS.build("origin_pairs").splits(0)
    model = MODELS.build("minilm", mode="frozen").build(splits.input, splits.num_classes)
    feats = [encoder_features(model, x) for x in
             (splits.train.x, splits.test.x, splits.extra["origins"].x)]
    result = origin_identification(feats[0], feats[2][splits.train.y], feats[1], feats[2],
                                   splits.test.y, ridge=1.0)
    assert result.map_with >= result.map_without


@pytest.mark.parametrize("call, match", [
    (lambda: average_precision(torch.ones(3), torch.zeros(3, dtype=torch.bool)), "relevant"),
    (lambda: retrieval_map(torch.ones(2, 3), torch.ones(4, 2), torch.tensor([0, 1])),
     "queries and gallery"),
    (lambda: retrieval_map(torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0, 9])),
     "targets"),
    (lambda: fit_linear_map(torch.ones(3, 2), torch.ones(4, 2)), "source and target"),
    (lambda: fit_linear_map(torch.ones(3, 2), torch.ones(3, 2), ridge=-1.0), "ridge"),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
