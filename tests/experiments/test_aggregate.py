"""Aggregation over seeds against hand-computed means and Student-t intervals."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from heldout.experiments import (
    AVERAGE,
    SELECTION_RULES,
    Interval,
    Selection,
    Table,
    aggregate,
    mean_interval,
    select,
    t_quantile,
    to_csv,
    to_markdown,
)


def selection(held_out: str, seed: int, rule: str = "oracle", **test: float) -> Selection:
    """A chosen run whose final test metrics are ``test`` (keys without the "test/" prefix)."""
    return Selection(
        rule=rule, task="toy", technique="erm", held_out=(held_out,), seed=seed,
        run_id=f"{held_out}-{seed}", hparams=0, score=0.5, step=10, checkpoint=None,
        test={f"test/{k}": v for k, v in test.items()},
    )


def unselected(held_out: str, seed: int, rule: str = "oracle") -> Selection:
    return Selection(rule=rule, task="toy", technique="erm", held_out=(held_out,), seed=seed,
                     run_id=None, hparams=None, score=math.nan, step=None, checkpoint=None,
                     missing=("draw 2: no run holding out {a, c}",))


def half_width(values: list[float], confidence: float = 0.95) -> float:
    """Hand computation: t_{(1+c)/2, n-1} * s / sqrt(n) with scipy's quantile."""
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return stats.t.ppf((1 + confidence) / 2, n - 1) * s / math.sqrt(n)


@pytest.mark.parametrize("df", [*range(1, 41), 57, 100, 999, 5000])
@pytest.mark.parametrize("p", [0.975, 0.95, 0.995, 0.6, 0.025])
def test_t_quantile_matches_scipy(df, p):
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-12)


def test_t_quantile_refuses_bad_arguments():
    assert t_quantile(0.5, 3) == 0.0
    for p, df in [(0.0, 3), (1.0, 3), (0.9, 0), (0.9, 2.5)]:
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mean_interval_hand_computed():
    # mean .8333..., s = .0305505, t_{.975,2} = 4.302653 → half = .0758917
    got = mean_interval([0.80, 0.84, 0.86])
    assert got.n == 3
    assert got.mean == pytest.approx(0.8333333333333334)
    assert got.half_width == pytest.approx(0.0758917, abs=1e-6)
    assert got.half_width == pytest.approx(half_width([0.80, 0.84, 0.86]), rel=1e-9)
    assert (got.low, got.high) == pytest.approx((got.mean - got.half_width,
                                                 got.mean + got.half_width))
    ninety = mean_interval([0.80, 0.84, 0.86], confidence=0.90)
    assert ninety.half_width == pytest.approx(half_width([0.80, 0.84, 0.86], 0.90), rel=1e-9)
    one = mean_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.half_width) and one.n == 1
    none = mean_interval([])
    assert math.isnan(none.mean) and math.isnan(none.half_width) and none.n == 0


A = [0.80, 0.84, 0.86]  # test accuracy on held-out {a}, seeds 0, 1, 2
B = [0.60, 0.70, 0.65]  # on {b}
ECE_A = [0.03, 0.05, 0.04]
ECE_B = [0.10, 0.12, 0.08]


def balanced() -> list[Selection]:
    return ([selection("a", s, accuracy=A[s], ece=ECE_A[s]) for s in range(3)]
            + [selection("b", s, accuracy=B[s], ece=ECE_B[s]) for s in range(3)])


def test_aggregate_per_held_out_set_and_average():
    table = aggregate(balanced())
    assert table.columns == ("rule", "task", "technique", "held_out", "seeds", "missing",
                             "accuracy", "ece")  # no worst-group metric was logged
    assert [row["held_out"] for row in table] == ["a", "b", AVERAGE]
    assert all(row["rule"] == "oracle" and row["seeds"] == 3 and row["missing"] == 0
               for row in table)
    a, b, average = table.rows
    assert a["accuracy"].mean == pytest.approx(0.8333333333)
    assert a["accuracy"].half_width == pytest.approx(half_width(A))
    assert b["accuracy"].mean == pytest.approx(0.65)
    assert b["accuracy"].half_width == pytest.approx(half_width(B))
    assert a["ece"].mean == pytest.approx(0.04) and b["ece"].mean == pytest.approx(0.10)
    assert a["ece"].half_width == pytest.approx(half_width(ECE_A))
    # average: mean of the per-set means; interval over the per-seed averages .70, .77, .755
    assert average["accuracy"].mean == pytest.approx((0.8333333333 + 0.65) / 2)
    assert average["accuracy"].half_width == pytest.approx(half_width([0.70, 0.77, 0.755]))
    assert average["accuracy"].n == 3
    assert average["ece"].mean == pytest.approx(0.07)
    assert average["ece"].half_width == pytest.approx(half_width([0.065, 0.085, 0.06]))


def test_unbalanced_seeds_and_missing_groups():
    selections = balanced()[:5] + [unselected("b", 2)]  # seed 2 has no selection for {b}
    a, b, average = aggregate(selections).rows
    assert (a["seeds"], a["missing"]) == (3, 0)
    assert (b["seeds"], b["missing"]) == (2, 1)
    assert b["accuracy"].mean == pytest.approx(0.65)  # (.60 + .70) / 2
    assert b["accuracy"].half_width == pytest.approx(half_width([0.60, 0.70]))
    assert (average["seeds"], average["missing"]) == (2, 1)
    # DomainBed's mean of means (a over 3 seeds, b over 2); interval over seeds 0 and 1 only
    assert average["accuracy"].mean == pytest.approx((0.8333333333 + 0.65) / 2)
    assert average["accuracy"].half_width == pytest.approx(half_width([0.70, 0.77]))
    assert average["accuracy"].n == 2


def test_one_seed_gives_no_interval_and_an_absent_set_no_average():
    table = aggregate([selection("a", 0, accuracy=0.8), unselected("b", 0)])
    a, b, average = table.rows
    assert a["accuracy"].mean == 0.8 and math.isnan(a["accuracy"].half_width)
    assert b["accuracy"].n == 0 and math.isnan(b["accuracy"].mean)
    assert math.isnan(average["accuracy"].mean) and average["seeds"] == 0
    assert to_csv(table).splitlines()[1:] == [
        "oracle,toy,erm,a,1,0,80.0 ± nan", "oracle,toy,erm,b,0,1,", "oracle,toy,erm,average,0,1,"]


def test_worst_group_column_and_rule_order():
    selections = ([selection("a", s, "lodo", accuracy=0.5, worst_group_accuracy=0.2)
                   for s in range(2)]
                  + [selection("a", s, "oracle", accuracy=0.6) for s in range(2)])
    table = aggregate(selections)
    assert table.metrics == ("accuracy", "worst_group_accuracy")
    assert [(r["rule"], r["held_out"]) for r in table] == [
        ("lodo", "a"), ("lodo", AVERAGE), ("oracle", "a"), ("oracle", AVERAGE)]
    assert table[0]["worst_group_accuracy"].mean == pytest.approx(0.2)
    assert table[2]["worst_group_accuracy"].n == 0
    chosen = aggregate(selections, metrics=["ece"])
    assert chosen.metrics == ("ece",) and chosen[0]["ece"].n == 0
    with pytest.raises(ValueError, match="unknown metrics"):
        aggregate(selections, metrics=["f1"])


def test_aggregate_of_real_selections():
    def rec(h, seed, held, val, acc):
        return {"run_id": f"{held}{seed}{h}", "task": "toy", "technique": "erm", "hparams": h,
                "seed": seed, "held_out": (held,), "domains": ("a", "b"),
                "final": {"val/accuracy": val, "test/accuracy": acc, "test/ece": 0.1},
                "history": {}, "checkpoint": None}

    records = [rec(0, 0, "a", 0.9, 0.70), rec(1, 0, "a", 0.8, 0.75),
               rec(0, 1, "a", 0.7, 0.60), rec(1, 1, "a", 0.8, 0.66)]
    row = aggregate(select(records, "train_domain_val"))[0]
    # seed 0 picks draw 0 (.70), seed 1 picks draw 1 (.66)
    assert row["accuracy"].mean == pytest.approx(0.68)
    assert row["accuracy"].half_width == pytest.approx(half_width([0.70, 0.66]))
    assert row["rule"] == "train_domain_val"


def two_rows() -> Table:
    return Table(
        columns=("rule", "task", "technique", "held_out", "seeds", "missing", "accuracy", "ece"),
        rows=[
            {"rule": "oracle", "task": "toy", "technique": "erm", "held_out": "a", "seeds": 3,
             "missing": 0, "accuracy": Interval(0.8333333, 0.0772, 3),
             "ece": Interval(0.0346, 0.0012, 3)},
            {"rule": "oracle", "task": "toy", "technique": "erm", "held_out": AVERAGE,
             "seeds": 1, "missing": 0, "accuracy": Interval(0.7, math.nan, 1),
             "ece": Interval(math.nan, math.nan, 0)},
        ],
    )


def test_to_csv_exact():
    assert to_csv(two_rows()) == (
        "rule,task,technique,held_out,seeds,missing,accuracy,ece\n"
        "oracle,toy,erm,a,3,0,83.3 ± 7.7,3.46 ± 0.12\n"
        "oracle,toy,erm,average,1,0,70.0 ± nan,\n"
    )
    assert to_csv(two_rows(), formatted=False) == (
        "rule,task,technique,held_out,seeds,missing,accuracy_mean,accuracy_half_width,"
        "accuracy_n,ece_mean,ece_half_width,ece_n\n"
        "oracle,toy,erm,a,3,0,0.8333333,0.0772,3,0.0346,0.0012,3\n"
        "oracle,toy,erm,average,1,0,0.7,nan,1,nan,nan,0\n"
    )


def test_to_markdown_exact():
    assert to_markdown(two_rows(), describe=False) == (
        "| rule | task | technique | held-out | seeds | missing | accuracy (%) | ECE (×100) |\n"
        "|---|---|---|---|---:|---:|---:|---:|\n"
        "| oracle | toy | erm | a | 3 | 0 | 83.3 ± 7.7 | 3.46 ± 0.12 |\n"
        "| oracle | toy | erm | average | 1 | 0 | 70.0 ± nan |  |\n"
    )
    described = to_markdown(two_rows())
    assert described.endswith(
        "|  |\n\nCells: mean ± half-width of the 95% Student-t interval over seeds "
        "(nan: one seed); accuracies in %, ECE ×100.\n"
        f"- `oracle`: {SELECTION_RULES.get('oracle').summary}\n"
    )
