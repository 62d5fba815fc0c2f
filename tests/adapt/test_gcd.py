"""ProtoGCD's losses on hand cases, its end-to-end recovery of new classes on separated
blobs, and the pseudo-labeling baseline against its degenerate settings."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.adapt.gcd import (
    GCDPseudoLabel,
    ProtoGCD,
    dapl_targets,
    dual_level_pseudo_label_loss,
    entropy_regularization,
    kmeans,
    prototype_separation,
)
from heldout.core.adapter import Source
from heldout.measures.gcd import gcd_accuracy

torch.set_num_threads(1)


# ---------------------------------------------------------------------- losses, by hand

def test_dapl_targets_hard_for_the_most_confident_share_soft_for_the_rest():
    logits = torch.tensor([[3.0, 0.0, 0.0],   # confidence ratio e^3: most confident
                           [0.2, 0.0, 0.1],   # ratio e^0.1: least
                           [0.0, 2.0, 0.0],   # ratio e^2
                           [0.0, 0.5, 0.0]])  # ratio e^0.5
    soft = F.softmax(logits, dim=-1)
    targets = dapl_targets(logits, ratio=0.5, temperature=1.0)
    assert targets[0].tolist() == [1.0, 0.0, 0.0] and targets[2].tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(targets[1], soft[1]) and torch.equal(targets[3], soft[3])
    assert torch.allclose(dapl_targets(logits, 0.0, 0.5), F.softmax(logits / 0.5, dim=-1))
    assert torch.equal(dapl_targets(logits, 1.0, 1.0), F.one_hot(logits.argmax(1), 3).float())
    with pytest.raises(ValueError, match="ratio"):
        dapl_targets(logits, 1.5, 1.0)


def test_dapl_loss_by_hand():
    student = torch.tensor([[0.3, -0.1], [0.0, 0.2]])
    teacher = torch.tensor([[0.9, 0.1], [0.4, 0.5]])
    # ratio 1/2: row 0 (ratio e^(0.8/0.05)) is hard class 0, row 1 soft at temperature 0.05
    q1 = torch.softmax(teacher[1] / 0.05, 0)
    log_p = torch.log_softmax(student / 0.1, dim=1)
    want = (-log_p[0, 0] - (q1 * log_p[1]).sum()) / 2
    got = dual_level_pseudo_label_loss(student, teacher, 0.5, 0.1, 0.05)
    assert torch.allclose(got, want)
    # all hard: plain cross-entropy with the teacher's arg-max
    assert torch.allclose(dual_level_pseudo_label_loss(student, teacher, 1.0),
                          F.cross_entropy(student / 0.1, teacher.argmax(1)))
    # the teacher gets no gradient
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    dual_level_pseudo_label_loss(student, teacher, 0.5).backward()
    assert teacher.grad is None and student.grad is not None


def test_entropy_regularization_by_hand():
    # near one-hot rows on classes 0 and 1 of 3: mean (1/2, 1/2, 0) → log 3 − log 2
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert math.isclose(float(entropy_regularization(rows, 1e-3)), math.log(3) - math.log(2),
                        rel_tol=1e-5)
    # all in one class → log K; a uniform mean → 0
    assert math.isclose(float(entropy_regularization(rows[:1].repeat(4, 1), 1e-3)),
                        math.log(3), rel_tol=1e-5)
    assert abs(float(entropy_regularization(torch.zeros(5, 4)))) < 1e-6


def test_prototype_separation_by_hand():
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    triangle = torch.stack([angles.cos(), angles.sin()], 1) * 3.0  # norms do not matter
    # every pair at cosine −1/2: log mean exp(−0.5 / τ) = −0.5 / τ
    assert math.isclose(float(prototype_separation(triangle, 0.1)), -5.0, rel_tol=1e-5)
    # orthonormal prototypes: cosine 0 → 0; unequal cosines by hand
    assert abs(float(prototype_separation(torch.eye(3), 0.1))) < 1e-6
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    want = (math.log((1 + math.exp(c)) / 2) * 2 + math.log(math.exp(c))) / 3
    assert math.isclose(float(prototype_separation(protos, 1.0)), want, rel_tol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        prototype_separation(torch.ones(1, 2))


# ---------------------------------------------------------------------- end to end

OLD, NEW, DIM = 3, 2, 8


def blobs(per_class: int, seed: int, classes=range(OLD + NEW), spread: float = 1.0):
    """Gaussian blobs around the scaled basis vectors e_0 .. e_4 (distance 6·√2 between
    centers, unit spread per coordinate)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(list(classes)).repeat_interleave(per_class)
    centers = torch.eye(DIM)[labels] * 6.0
    return centers + spread * torch.randn(len(labels), DIM, generator=g), labels


def identity_model() -> nn.Module:
    """Features = inputs; a linear head over the old classes (unused by ProtoGCD)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Identity(), nn.Linear(DIM, OLD))


@pytest.fixture(scope="module")
def fitted():
    source = Source(*blobs(20, seed=0, classes=range(OLD)))
    queries, labels = blobs(40, seed=1)
    adapter = ProtoGCD(num_new=NEW, steps=150).bind(identity_model(), source)
    return adapter, queries, labels, adapter.transduce(queries)


def test_protogcd_recovers_the_new_classes_on_separated_blobs(fitted):
    adapter, queries, labels, scores = fitted
    assert scores.shape == (len(queries), OLD + NEW)
    accuracy = gcd_accuracy(scores.argmax(1), labels, OLD)
    # The centers are 8.5 standard deviations apart, so the Bayes error is ~0: anything short
    # of near-perfect recovery means the prototypes or the losses are wrong. 0.95 leaves room
    # for a few points of the 200 on the wrong side of a learned boundary.
    assert accuracy["new"] >= 0.95 and accuracy["old"] >= 0.95, accuracy
    # the old classes keep their own columns (no matching needed for them)
    old = labels < OLD
    assert (scores[old].argmax(1) == labels[old]).float().mean() >= 0.95


def test_protogcd_is_deterministic_and_keeps_what_it_learned(fitted):
    adapter, queries, labels, scores = fitted
    assert torch.equal(adapter.transduce(queries), scores)  # refits to the same scores
    # the learned prototypes are in the state: a fresh adapter loaded with it predicts alike
    fresh_x, fresh_y = blobs(10, seed=2)
    other = ProtoGCD(num_new=NEW, steps=150).bind(
        identity_model(), Source(*blobs(20, seed=0, classes=range(OLD))))
    other.load_state_dict(adapter.state_dict())
    assert torch.equal(other.predict(fresh_x), adapter.predict(fresh_x))
    assert gcd_accuracy(adapter.predict(fresh_x).argmax(1), fresh_y, OLD)["all"] >= 0.95


def test_protogcd_rejects_bad_sources_and_queries():
    model = identity_model()
    with pytest.raises(ValueError, match="old classes 0 .. n_old-1"):
        ProtoGCD().bind(model, Source(torch.randn(4, DIM), torch.tensor([0, 2, 2, 0])))
    adapter = ProtoGCD(num_new=NEW).bind(model, Source(*blobs(1, seed=0, classes=range(OLD))))
    with pytest.raises(ValueError, match="cannot seed"):
        adapter.transduce(torch.randn(1, DIM))
    with pytest.raises(RuntimeError, match="transduce"):
        adapter.predict(torch.randn(2, DIM))
    with pytest.raises(TypeError, match="only the query set"):
        adapter.transduce(torch.randn(9, DIM), support_x=torch.randn(1, DIM))


# ---------------------------------------------------------------------- the baseline

def test_kmeans_finds_separated_blobs():
    x, y = blobs(15, seed=3)
    centroids, assignments = kmeans(x, OLD + NEW, seed=0)
    assert gcd_accuracy(assignments, y, OLD)["all"] == 1.0
    for c in range(OLD + NEW):  # every centroid is the mean of its cluster
        assert torch.allclose(centroids[c], x[assignments == c].mean(0), atol=1e-4)


def test_baseline_at_threshold_one_is_kmeans_on_every_example():
    source = Source(*blobs(20, seed=0, classes=range(OLD)))
    x, _ = blobs(10, seed=4)
    scores = GCDPseudoLabel(num_new=NEW, threshold=1.0).bind(identity_model(), source)(x)
    assert (scores[:, :OLD] == 0).all()
    _, assignments = kmeans(F.normalize(x, dim=-1), NEW, seed=0)
    assert torch.equal(scores[:, OLD:].argmax(1), assignments)


def test_baseline_at_threshold_zero_keeps_the_classifier_except_the_least_confident():
    model = identity_model()
    source = Source(*blobs(20, seed=0, classes=range(OLD)))
    x, _ = blobs(10, seed=5)
    scores = GCDPseudoLabel(num_new=NEW, threshold=0.0).bind(model, source)(x)
    probs = torch.softmax(model(x), dim=1)
    least = probs.max(1).values.argsort()[:NEW]
    kept = torch.ones(len(x), dtype=torch.bool)
    kept[least] = False
    assert torch.equal(scores[kept, :OLD], probs[kept]) and (scores[kept, OLD:] == 0).all()
    assert (scores[least, :OLD] == 0).all()
    assert sorted(scores[least, OLD:].argmax(1).tolist()) == [0, 1]  # one per cluster


def test_baseline_rejects_too_few_queries():
    adapter = GCDPseudoLabel(num_new=NEW).bind(identity_model(),
                                               Source(*blobs(2, seed=0, classes=range(OLD))))
    with pytest.raises(ValueError, match="new clusters"):
        adapter(torch.randn(1, DIM))
