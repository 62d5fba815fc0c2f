"""Model selection against hand-computed choices.

The sweep: task "toy" with domains a, b, c; technique "erm"; draws 0, 1, 2; seeds 0, 1; test
sets {a} and {b}; and the leave-one-domain-out runs {a,b}, {a,c}, {b,c} for every draw and seed.
The numbers are chosen so that the rules disagree:

=========  ===============  ===================  =================  ====
group      train_domain_val  lodo                 oracle (last step)  last
=========  ===============  ===================  =================  ====
{a}, s0    h1 (.80)          h2 (.66+.70)/2=.68   h0 (.50)            h0
{b}, s0    h0 (.81)          h1 (.72+.74)/2=.73   h2 (.52)            h0
{a}, s1    h2 (.83)          h0 (.65+.67)/2=.66   h1 (.47)            h0
{b}, s1    h1 (.90)          h0 (.70+.68)/2=.69   h2 (.58)            h0
=========  ===============  ===================  =================  ====
"""

from __future__ import annotations

import math

import pytest

from heldout.experiments import (
    SELECTION_RULES,
    Selection,
    get_rule,
    record_from_store,
    select,
    select_all,
)
from heldout.registry import UnknownNameError

DOMAINS = ("a", "b", "c")
# final pooled training-domain validation accuracy, per (test set, seed): draws 0, 1, 2
TRAIN_VAL = {("a", 0): (0.70, 0.80, 0.75), ("b", 0): (0.81, 0.77, 0.79),
             ("a", 1): (0.71, 0.69, 0.83), ("b", 1): (0.60, 0.90, 0.70)}
# final test-domain validation accuracy val@<test domain>/accuracy
ORACLE = {("a", 0): (0.50, 0.45, 0.48), ("b", 0): (0.40, 0.42, 0.52),
          ("a", 1): (0.35, 0.47, 0.44), ("b", 1): (0.55, 0.50, 0.58)}
# LODO runs: (held-out pair, seed) → per draw, {domain: final val@domain/accuracy}
LODO = {
    ("ab", 0): ({"a": 0.60, "b": 0.60}, {"a": 0.72, "b": 0.55}, {"a": 0.58, "b": 0.66}),
    ("ac", 0): ({"a": 0.30, "c": 0.62}, {"a": 0.30, "c": 0.57}, {"a": 0.30, "c": 0.70}),
    ("bc", 0): ({"b": 0.30, "c": 0.64}, {"b": 0.30, "c": 0.74}, {"b": 0.30, "c": 0.60}),
    ("ab", 1): ({"a": 0.70, "b": 0.65}, {"a": 0.52, "b": 0.50}, {"a": 0.60, "b": 0.52}),
    ("ac", 1): ({"a": 0.30, "c": 0.67}, {"a": 0.30, "c": 0.61}, {"a": 0.30, "c": 0.58}),
    ("bc", 1): ({"b": 0.30, "c": 0.68}, {"b": 0.30, "c": 0.66}, {"b": 0.30, "c": 0.54}),
}
EXPECTED = {  # rule → (test domain, seed) → (draw, score)
    "train_domain_val": {("a", 0): (1, 0.80), ("b", 0): (0, 0.81),
                         ("a", 1): (2, 0.83), ("b", 1): (1, 0.90)},
    "lodo": {("a", 0): (2, 0.68), ("b", 0): (1, 0.73), ("a", 1): (0, 0.66), ("b", 1): (0, 0.69)},
    "oracle": {("a", 0): (0, 0.50), ("b", 0): (2, 0.52), ("a", 1): (1, 0.47), ("b", 1): (2, 0.58)},
    "last": {("a", 0): (0, math.nan), ("b", 0): (0, math.nan),
             ("a", 1): (0, math.nan), ("b", 1): (0, math.nan)},
}


def run_id(held_out: str, seed: int, h: int) -> str:
    return f"{held_out}-s{seed}-h{h}"


def last_step(h: int) -> int:
    return 300 + 10 * h  # each draw ends at a different step, so the step is checked


def final_test_metrics(held_out: str, seed: int, h: int) -> dict[str, float]:
    accuracy = 0.5 + 0.1 * h + 0.01 * seed + (0.2 if held_out == "b" else 0.0)
    return {"test/accuracy": accuracy, "test/worst_group_accuracy": accuracy - 0.3,
            "test/ece": 0.01 * (h + 1), f"test@{held_out}/accuracy": accuracy}


def record(held_out: str, seed: int, h: int, final: dict[str, float],
           history: dict[str, list[tuple[int, float]]] | None = None) -> dict:
    rid = run_id(held_out, seed, h)
    end = last_step(h)
    return {
        "run_id": rid, "task": "toy", "technique": "erm", "hparams": h, "seed": seed,
        "held_out": tuple(held_out), "domains": DOMAINS, "final": final,
        "history": history or {k: [(100, 0.0), (200, 0.0), (end, v)] for k, v in final.items()},
        "checkpoint": f"/sweep/{rid}/checkpoint.pt",
    }


def sweep() -> list[dict]:
    records = []
    for (test, seed), train_val in TRAIN_VAL.items():
        for h in range(3):
            final = {"val/accuracy": train_val[h], f"val@{test}/accuracy": ORACLE[test, seed][h],
                     "train/accuracy": 1.0, **final_test_metrics(test, seed, h)}
            history = {k: [(100, 0.0), (200, 0.0), (last_step(h), v)] for k, v in final.items()}
            if (test, seed, h) == ("a", 0, 2):  # the oracle's trap: best at an earlier step
                history["val@a/accuracy"] = [(100, 0.48), (200, 0.90), (last_step(h), 0.48)]
            if (test, seed, h) == ("a", 0, 0):  # same trap for training-domain validation
                history["val/accuracy"] = [(100, 0.70), (200, 0.99), (last_step(h), 0.70)]
            records.append(record(test, seed, h, final, history))
    for (pair, seed), per_draw in LODO.items():
        for h, values in enumerate(per_draw):
            final = {f"val@{d}/accuracy": v for d, v in values.items()}
            final["val/accuracy"] = 0.99  # must not matter
            final.update(final_test_metrics(pair, seed, h))
            records.append(record(pair, seed, h, final))
    return records


def by_group(selections: list[Selection]) -> dict[tuple[str, int], Selection]:
    return {("".join(s.held_out), s.seed): s for s in selections}


@pytest.mark.parametrize("rule", list(EXPECTED))
def test_rule_chooses_hand_computed_draws(rule):
    selections = select(sweep(), rule)
    assert [("".join(s.held_out), s.seed) for s in selections] == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # only the test sets form groups
    for (test, seed), sel in by_group(selections).items():
        draw, score = EXPECTED[rule][test, seed]
        assert sel.rule == rule and sel.task == "toy" and sel.technique == "erm"
        assert sel.hparams == draw, (rule, test, seed)
        assert sel.run_id == run_id(test, seed, draw)
        if math.isnan(score):
            assert math.isnan(sel.score)
        else:
            assert sel.score == pytest.approx(score, abs=1e-12)
        assert sel.step == last_step(draw)
        assert sel.checkpoint == f"/sweep/{run_id(test, seed, draw)}/checkpoint.pt"
        assert sel.test == final_test_metrics(test, seed, draw)  # no val/train keys
        assert sel.missing == () and sel.ok


def test_the_rules_disagree():
    chosen = {rule: {k: v[0] for k, v in table.items()} for rule, table in EXPECTED.items()}
    assert chosen["train_domain_val"] != chosen["lodo"] != chosen["oracle"]
    assert len({chosen[r]["a", 0] for r in ("train_domain_val", "lodo", "oracle")}) == 3


def test_lodo_scores_every_draw_from_the_runs_that_also_held_out_d():
    sel = by_group(select(sweep(), "lodo"))["b", 0]
    # draw h: mean of val@a of run {a,b} and val@c of run {b,c}
    assert sel.scores == pytest.approx({0: 0.62, 1: 0.73, 2: 0.59})


def test_oracle_reads_the_last_step_only_one_query_per_draw():
    sel = by_group(select(sweep(), "oracle"))["a", 0]
    # draw 2 reached .90 at step 200, but the oracle may only query the last step
    assert sel.hparams == 0 and sel.scores == pytest.approx({0: 0.50, 1: 0.45, 2: 0.48})
    assert sel.test_domain_queries == 3
    for rule in ("train_domain_val", "lodo", "last"):
        assert all(s.test_domain_queries == 0 for s in select(sweep(), rule))
    assert "one test-domain query per draw" in SELECTION_RULES.get("oracle").summary


def test_train_domain_val_ignores_an_earlier_better_step():
    sel = by_group(select(sweep(), "train_domain_val"))["a", 0]
    assert sel.hparams == 1 and sel.scores[0] == pytest.approx(0.70)


def test_missing_lodo_run_is_reported_not_skipped():
    records = [r for r in sweep() if r["run_id"] != run_id("ac", 1, 2)]
    selections = by_group(select(records, "lodo"))
    broken = selections["a", 1]
    assert not broken.ok and broken.run_id is None and broken.checkpoint is None
    assert broken.missing == ("draw 2: no run holding out {a, c}",)
    assert math.isnan(broken.score)
    assert broken.scores == pytest.approx({0: 0.66, 1: 0.555})
    # the other groups do not need that run
    assert all(selections[k].ok for k in [("a", 0), ("b", 0), ("b", 1)])
    # other rules do not read LODO runs at all
    assert all(s.ok for s in select(records, "train_domain_val"))
    # non-strict: choose among the complete draws, and still say what was missing
    relaxed = by_group(select(records, "lodo", strict=False))["a", 1]
    assert relaxed.hparams == 0 and relaxed.run_id == run_id("a", 1, 0)
    assert relaxed.missing == ("draw 2: no run holding out {a, c}",)


def test_missing_metric_and_missing_main_run_are_reported():
    records = sweep()
    for r in records:
        if r["run_id"] == run_id("ab", 0, 1):
            del r["final"]["val@a/accuracy"]
    records = [r for r in records if r["run_id"] != run_id("b", 1, 0)]
    lodo = by_group(select(records, "lodo"))
    assert lodo["b", 0].missing == ("draw 1: run 'ab-s0-h1' has no final val@a/accuracy",)
    assert lodo["a", 0].ok  # {a,b}'s val@b is still there
    tdv = by_group(select(records, "train_domain_val"))
    assert tdv["b", 1].missing == ("draw 0: no run holding out {b}",) and not tdv["b", 1].ok
    last = by_group(select(records, "last"))
    assert not last["b", 1].ok and last["b", 1].missing == ("draw 0: no run holding out {b}",)
    assert last["a", 1].ok


def test_lodo_for_a_held_out_pair_needs_the_triples():
    sel = select(sweep(), "lodo", held_out=[("a", "b")])  # needs the runs holding out {a, b, c}
    assert [s.seed for s in sel] == [0, 1]
    assert all(not s.ok and s.held_out == ("a", "b") for s in sel)
    assert "draw 0: no run holding out {a, b, c}" in sel[0].missing


def test_explicit_held_out_groups_and_select_all():
    only_b = select(sweep(), "oracle", held_out=[("b",)])
    assert [(s.held_out, s.seed, s.hparams) for s in only_b] == [(("b",), 0, 2), (("b",), 1, 2)]
    everything = select_all(sweep())
    assert [s.rule for s in everything[::4]] == list(SELECTION_RULES)
    assert len(everything) == 4 * len(SELECTION_RULES)


def test_ties_go_to_the_lowest_draw():
    records = [record("a", 0, h, {"val/accuracy": 0.5, "test/accuracy": 0.1 * h})
               for h in (2, 1, 0)]
    assert select(records, "train_domain_val")[0].hparams == 0


def test_rules_have_names_and_one_line_descriptions():
    assert list(SELECTION_RULES) == ["train_domain_val", "lodo", "oracle", "last"]
    for entry in SELECTION_RULES.entries():
        rule = get_rule(entry.name)
        assert rule.name == entry.name and rule.description == entry.summary
        assert "\n" not in rule.description
        assert get_rule(entry.name) is rule and get_rule(rule) is rule
    with pytest.raises(UnknownNameError, match="valid selection rules: train_domain_val, lodo"):
        get_rule("best")


def test_bad_records_are_refused():
    records = sweep()
    with pytest.raises(ValueError, match="are the same task"):
        select(records + [dict(records[0], run_id="copy")], "oracle")
    broken = dict(records[0])
    del broken["final"]
    with pytest.raises(ValueError, match="lacks \\['final'\\]"):
        select([broken], "oracle")


def test_record_from_store(store):
    store.create_run("r1", {"task": {"name": "toy"}}, seed=3)
    store.log_metrics("r1", [(5, "val", "accuracy", 0.4), (10, "val", "accuracy", 0.6),
                             (10, "test@c", "accuracy", 0.3)])
    rec = record_from_store(store, "r1", task="toy", technique="erm", hparams=0, seed=3,
                            held_out=["c"], domains=DOMAINS)
    assert rec["final"] == {"val/accuracy": 0.6, "test@c/accuracy": 0.3}
    assert rec["history"]["val/accuracy"] == [(5, 0.4), (10, 0.6)]
    assert rec["checkpoint"] is None and rec["held_out"] == ("c",)
    path = store.run_dir("r1") / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    rec = record_from_store(store, "r1", task="toy", technique="erm", hparams=0, seed=3,
                            held_out=["c"], domains=DOMAINS)
    assert rec["checkpoint"] == str(path)
    sel = select([rec], "train_domain_val")[0]
    assert sel.step == 10 and sel.checkpoint == str(path) and sel.test == {"test@c/accuracy": 0.3}
