"""LOOK (#26): the leave-one-out k-NN loss against hand computations, loops and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from heldout import Trainer
from heldout.methods.look import LOOK, LOOKNetwork, knn_log_probs, look_loss, neighbour_votes


def test_four_points_by_hand():
    # unit vectors: s01=0.8, s02=0, s03=0.6, s12=0.6, s13=0.96, s23=0.8; k=2, τ=1
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    y = torch.tensor([0, 0, 1, 1])
    e = math.exp
    p = [e(0.8) / (e(0.8) + e(0.6)),   # 0: neighbours 1 (same), 3
         e(0.8) / (e(0.96) + e(0.8)),  # 1: neighbours 3, 0 (same)
         e(0.8) / (e(0.8) + e(0.6)),   # 2: neighbours 3 (same), 1
         e(0.8) / (e(0.96) + e(0.8))]  # 3: neighbours 1, 2 (same)
    expected = -sum(math.log(v) for v in p) / 4
    assert float(look_loss(z, y, k=2, temperature=1.0, eps=0.0)) == pytest.approx(expected,
                                                                                 rel=1e-6)
    # normalization: scaling a feature vector changes nothing
    scaled = z * torch.tensor([[3.0], [0.5], [2.0], [7.0]])
    assert float(look_loss(scaled, y, k=2, temperature=1.0, eps=0.0)) == pytest.approx(
        expected, rel=1e-6)


def test_self_never_votes():
    # every example is its own nearest point; with all labels distinct no OTHER example agrees
    z = torch.randn(5, 3)
    y = torch.arange(5)
    assert float(look_loss(z, y, k=1, eps=1e-6)) == pytest.approx(-math.log(1e-6), rel=1e-6)
    # pairs of duplicates with different labels: each point's nearest OTHER point is its
    # copy, which disagrees (the point itself, equally near, would agree)
    z2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss = look_loss(z2, torch.tensor([0, 1, 0, 1]), k=1, eps=1e-6)
    assert float(loss) == pytest.approx(-math.log(1e-6), rel=1e-6)


def test_k_equals_b_minus_1_uniform_is_leave_one_out_class_frequency():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, generator=generator)
    y = torch.randint(0, 3, (12,), generator=generator)
    eps = 1e-6
    total = 0.0
    for i in range(12):
        same = sum(1 for j in range(12) if j != i and y[j] == y[i])
        total += -math.log(same / 11 + eps)
    got = look_loss(z, y, k=11, temperature=None, eps=eps)
    assert float(got) == pytest.approx(total / 12, rel=1e-5)


def test_gradient_is_finite_even_without_agreeing_neighbours():
    z = torch.randn(6, 4, requires_grad=True)
    z.data[0] = 0.0  # a zero feature vector (normalization must not divide by zero)
    y = torch.tensor([0, 1, 2, 3, 0, 0])
    for normalize in (True, False):
        z.grad = None
        look_loss(z, y, k=2, normalize=normalize).backward()
        assert torch.isfinite(z.grad).all()
    # an example whose k neighbours all disagree adds a constant and no gradient: the loss
    # of 0 and 1 (neighbours of each other, agreeing) does not depend on point 2 (label 1)
    far = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], requires_grad=True)
    look_loss(far, torch.tensor([0, 0, 1]), k=1, temperature=1.0).backward()
    assert torch.isfinite(far.grad).all() and torch.equal(far.grad[2], torch.zeros(2))


def test_knn_rule_matches_scikit_learn_uniform_cosine_vote():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(60, 5)), rng.normal(size=(25, 5))
    labels = rng.integers(0, 4, size=60)
    sk = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(bank, labels)
    ours = knn_log_probs(torch.tensor(queries), torch.tensor(bank), torch.tensor(labels), 4,
                         k=7, temperature=None, eps=0.0).exp()
    np.testing.assert_allclose(ours.numpy(), sk.predict_proba(queries), atol=1e-6)


def test_weighted_vote_is_softmax_over_the_k_nearest():
    s = torch.tensor([[0.1, 0.9, 0.5, -1.0]])
    w, j = neighbour_votes(s, k=2, temperature=0.5)
    assert j.tolist() == [[1, 2]]
    expected = torch.tensor([0.9, 0.5]).div(0.5).softmax(0)
    assert torch.allclose(w[0], expected)


def test_bad_input_names_the_parameter():
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="k must be <= B - 1"):
        look_loss(z, y, k=4)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        look_loss(z, y, k=0)
    with pytest.raises(ValueError, match="temperature"):
        look_loss(z, y, k=2, temperature=0.0)
    with pytest.raises(ValueError, match="labels must be"):
        look_loss(z, y[:3], k=2)
    with pytest.raises(ValueError, match="k"):
        LOOK(k=0)


def _trained(steps=60):
    from heldout.tasks.digits import Digits

    splits = Digits().splits(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    look = LOOK(k=5)
    trainer = Trainer(model, lambda p: torch.optim.Adam(p, lr=1e-2), splits.train,
                      max_steps=steps, batch_size=64, techniques=[look],
                      eval_data={"test": splits.test}, eval_every=steps)
    return trainer, splits, look


def test_technique_trains_features_only_and_predicts_by_knn():
    trainer, splits, look = _trained()
    head_before = trainer.model.head.weight.detach().clone()
    history = trainer.fit()
    assert isinstance(trainer.model, LOOKNetwork)
    assert torch.equal(trainer.model.head.weight, head_before)  # the head gets no gradient
    eval_model = look.eval_model(trainer.state)
    with torch.no_grad():
        trainer.model.eval()
        bank = trainer.model.features(splits.train.x)
        expected = knn_log_probs(trainer.model.features(splits.test.x), bank, splits.train.y,
                                 10, k=5).argmax(1)
        assert torch.equal(eval_model(splits.test.x).argmax(1), expected)
    accuracy = float((expected == splits.test.y).float().mean())
    assert history[-1][1]["test/accuracy"] == pytest.approx(accuracy)
    assert accuracy > 0.8  # 60 steps of LOOK on clean digits already give a usable k-NN
