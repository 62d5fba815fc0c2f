"""The evaluation harness: oracle and constant predictors, sweep tables, run ids resolved
through finished_trainer, adapters (online and in-context) and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

import heldout.experiments.harness as harness
from heldout.adapt import BNAdapt
from heldout.adapt.in_context import KNNInContext, sample_context
from heldout.config import RunConfig, parse_overrides
from heldout.experiments import to_csv, to_markdown
from heldout.experiments.harness import evaluate_predictor, harness_selections
from heldout.registry import TASKS
from heldout.run.execute import execute

SUITE = {"name": "digits_shift", "held_out": [2, 3]}
SWEEP_COLUMNS = ("rule", "task", "technique", "held_out", "seeds", "missing")


def oracle(seeds):
    """A predictor that knows every digits_shift example's label (a lookup by its bytes)."""
    task = TASKS.build("digits_shift", held_out=(2, 3))
    table = {}
    for seed in seeds:
        for _, split in task.splits(seed).items():
            table.update({row.numpy().tobytes(): int(y) for row, y in
                          zip(split.x, split.y, strict=True)})

    def predict(x):
        labels = torch.tensor([table[row.numpy().tobytes()] for row in x])
        return 50.0 * nn.functional.one_hot(labels, 10).float()

    return predict


def test_a_perfect_predictor_scores_one_everywhere():
    seeds = (0, 1)
    table = evaluate_predictor(oracle(seeds), [SUITE], ("accuracy", "ece"), seeds,
                               domains="all", name="oracle")
    assert [r["held_out"] for r in table] == ["rot0", "rot30", "rot60", "rot90", "average"]
    for row in table:
        assert row["accuracy"].mean == 1.0 and row["accuracy"].n == 2
        assert row["ece"].mean == pytest.approx(0.0, abs=1e-6)
        assert row["technique"] == "oracle" and row["rule"] == "harness" and row["seeds"] == 2


def test_a_constant_predictor_gets_the_class_share():
    seeds, label = (0, 1, 2), 3
    task = TASKS.build("digits_shift", held_out=(2, 3))
    table = evaluate_predictor(lambda x: nn.functional.one_hot(
        torch.full((len(x),), label), 10).float(), [SUITE], ["accuracy"], seeds)
    rows = {r["held_out"]: r for r in table}
    assert list(rows) == ["rot60", "rot90", "average"]  # the suite's held-out domains
    for domain in ("rot60", "rot90"):
        shares = [float((task.splits(s)[f"test@{domain}"].y == label).float().mean())
                  for s in seeds]
        cell = rows[domain]["accuracy"]
        assert cell.mean == pytest.approx(np.mean(shares))
        half = stats.t.ppf(0.975, 2) * np.std(shares, ddof=1) / np.sqrt(3)
        assert cell.half_width == pytest.approx(half)


def test_tables_have_the_sweep_columns_and_export():
    table = evaluate_predictor(lambda x: torch.zeros(len(x), 10), ["digits_shift"],
                               ["accuracy", "ece"], (0,))
    assert table.columns == (*SWEEP_COLUMNS, "accuracy", "ece")
    assert to_csv(table).splitlines()[0] == ",".join(table.columns)
    markdown = to_markdown(table)
    assert "| harness | digits_shift |" in markdown and "accuracy (%)" in markdown


def test_group_measures_run_on_the_predictions():
    selections = harness_selections(oracle((0,)), [SUITE], ["group_accuracy"], (0,))
    assert {s.held_out for s in selections} == {("rot60",), ("rot90",)}
    for s in selections:
        assert s.test["test/worst_group_accuracy"] == 1.0


def digits_run(store) -> str:
    cfg = parse_overrides(RunConfig(), [
        "task=digits_shift", "task.held_out=[2,3]", "model=mlp", "model.hidden=[32]",
        "model.batch_norm=true", "steps=30", "eval_every=30", "checkpoint_every=30",
        "optimizer.lr=0.01", "measures=[accuracy]", "seed=4"])
    execute(cfg, store)
    return cfg.identity


def test_a_run_id_is_scored_through_finished_trainer(store, monkeypatch):
    run_id = digits_run(store)
    calls, original = [], harness.finished_trainer

    def spy(run, st):
        calls.append(run)
        return original(run, st)

    monkeypatch.setattr(harness, "finished_trainer", spy)
    table = evaluate_predictor(run_id, store=store)
    assert calls == [run_id]
    rows = {r["held_out"]: r for r in table}
    final = store.final_metrics(run_id)
    for domain in ("rot60", "rot90"):  # the run's own evaluation, at its own seed
        assert rows[domain]["accuracy"].mean == pytest.approx(final[f"test@{domain}/accuracy"])
        assert rows[domain]["technique"] == run_id
    # the same model on a suite given explicitly, at several seeds
    again = evaluate_predictor(run_id, [SUITE], seeds=(4, 5), store=store)
    assert again[0]["accuracy"].n == 2
    assert again[0]["accuracy"].mean != rows["rot60"]["accuracy"].mean  # seed 5 differs


def test_adapters_online_and_in_context():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    online = evaluate_predictor(BNAdapt(net, episodic=True), [SUITE], seeds=(0,))
    assert online[0]["technique"] == "bn_adapt"

    features = nn.Sequential(nn.Identity(), nn.Linear(64, 10))  # raw pixels as features
    learner = KNNInContext(features, neighbours=3)
    shots, seed = 4, 1
    table = evaluate_predictor(learner, [SUITE], seeds=(seed,), shots=shots)
    # the oracle: scikit-learn's cosine k-NN on the same context from the same generator
    splits = TASKS.build("digits_shift", held_out=(2, 3)).splits(seed)
    rows = sample_context(splits.train.y, shots, torch.Generator().manual_seed(seed))
    knn = KNeighborsClassifier(3, metric="cosine", algorithm="brute", weights=lambda d: 1 - d)
    knn.fit(splits.train.x[rows].numpy(), splits.train.y[rows].numpy())
    for row in table.rows[:2]:
        test = splits[f"test@{row['held_out']}"]
        expected = float((knn.predict(test.x.numpy()) == test.y.numpy()).mean())
        assert row["accuracy"].mean == pytest.approx(expected)
    assert evaluate_predictor(learner, [SUITE], seeds=(seed,), shots=shots).rows == table.rows

    # in-context examples of the target domain itself: drawn from its val@ split
    target = evaluate_predictor(learner, [SUITE], seeds=(seed,), shots=shots, context="target")
    for row in target.rows[:2]:
        domain = row["held_out"]
        support, test = splits[f"val@{domain}"], splits[f"test@{domain}"]
        rows = sample_context(support.y, shots, torch.Generator().manual_seed(seed))
        knn.fit(support.x[rows].numpy(), support.y[rows].numpy())
        expected = float((knn.predict(test.x.numpy()) == test.y.numpy()).mean())
        assert row["accuracy"].mean == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"predictor": KNNInContext()}, ValueError, "not bound"),
    ({"predictor": 3}, TypeError, "predictor"),
    ({"suites": ["modular"]}, ValueError, "test@"),
    ({"suites": [7]}, TypeError, "suites"),
    ({"suites": None}, ValueError, "suites"),
    ({"measures": "accuracy"}, ValueError, "measures"),
    ({"seeds": ()}, ValueError, "seeds"),
    ({"domains": "train"}, ValueError, "domains"),
    ({"context": "test"}, ValueError, "context"),
    ({"shots": 0}, ValueError, "shots"),
])
def test_bad_input_names_the_parameter(kwargs, error, match):
    args = {"predictor": lambda x: torch.zeros(len(x), 10), "suites": ["digits_shift"],
            **kwargs}
    with pytest.raises(error, match=match):
        evaluate_predictor(**args)
