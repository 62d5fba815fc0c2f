"""Issue 9 (bugs 2, 6, 7 and weak spots): every bad input on the command line, in a sweep
spec or in a run gives one line and exit status 2, with no traceback and no run record;
sweep workers report why a run could not be built; divergence seen at evaluation stops the
run as non-finite."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from heldout.cli import main
from heldout.config import ConfigError, RunConfig, parse_overrides
from heldout.core.measure import EvalContext, NonFiniteOutputError
from heldout.experiments import Interval, Table, to_csv, to_markdown
from heldout.experiments.sweep import expand, plan_size, run_sweep, sweep_from_dict
from heldout.measures.calibration import expected_calibration_error
from heldout.run.execute import RunFailed, execute
from heldout.store import Store

TINY = ["task=modular", "task.p=23", "model.hidden=[16]", "steps=4", "eval_every=2"]
SPEC = "name: s\ntasks: [{name: modular, p: 23}]\nbase: {model: {name: mlp, hidden: [16]}, " \
       "steps: 4, eval_every: 2}\n"


def _run_ids(home: Path) -> set[str]:
    if not (home / "store.sqlite").exists():
        return set()
    return {r.id for r in Store(home).runs()}


def _one_line_exit_2(argv: list[str], capsys) -> str:
    """Run the CLI in-process; assert exit status 2 and a single line on stderr, no trace."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A store with a finished run whose checkpoint was deleted and a failed run."""
    home = tmp_path_factory.mktemp("home")
    done = execute(parse_overrides(RunConfig(), TINY), Store(home))
    (Store(home).run_dir(done.run_id) / "checkpoint.pt").unlink()
    bad = parse_overrides(RunConfig(), [*TINY, "optimizer.name=sgd", "optimizer.lr=1e30"])
    with pytest.raises(RunFailed):
        execute(bad, Store(home))
    return home, done.run_id, bad.identity


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


# each case: (name, argv built from tmp, expected fragment of the one line)
CASES = {
    "lr negative": (lambda t: ["run", *TINY, "optimizer.lr=-1"],
                    "optimizer.lr: must be a finite number >= 0, got -1.0"),
    "lr nan": (lambda t: ["run", *TINY, "optimizer.lr=nan"], "optimizer.lr: expected a number, "
               "got NaN"),
    "lr inf": (lambda t: ["run", *TINY, "optimizer.lr=.inf"], "optimizer.lr: must be a finite"),
    "seed negative": (lambda t: ["run", *TINY, "seed=-1"], "seed: must be >= 0, got -1"),
    "seed flag negative": (lambda t: ["run", *TINY, "--seed", "-1"], "seed: must be >= 0"),
    "seed huge": (lambda t: ["run", *TINY, "seed=100000000000000000000000"],
                  "seed: 100000000000000000000000 is out of range"),
    "conflicting techniques": (lambda t: ["run", *TINY, "--technique", "sam", "--technique",
                                          "tram"], "techniques 'sam' and 'tram' both replace"),
    "non-UTF-8 config": (lambda t: ["run", _file(t, "c.yaml", b"steps: 4\n# \xff\xfe\n")],
                         "c.yaml: config is not UTF-8 text (byte 0xff at offset 11)"),
    "model does not fit task": (lambda t: ["run", *TINY, "model=cnn1d"],
                                "cannot be built: CNN1D needs continuous inputs"),
    "init_from unknown": (lambda t: ["run", *TINY, "init_from=0123456789ab"],
                          "init_from: no run '0123456789ab'"),
    "argparse type": (lambda t: ["run", "--steps", "x"], "argument --steps: invalid int value"),
    "unknown flag": (lambda t: ["run", *TINY, "--bogus"], "unrecognized arguments: --bogus"),
    "runs export unknown": (lambda t: ["runs", "export", "UNKNOWN"], "no run 'UNKNOWN'"),
    "runs export into a directory": (lambda t: ["runs", "export", "--out", str(t)],
                                     "is a directory; give a file name"),
    "report out is a file": (lambda t: ["report", "x", "--out", _file(t, "r.html", "")],
                             "--out " + "{tmp}/r.html is a file; give a directory"),
    "report out under a file": (lambda t: ["report", "x", "--out",
                                           _file(t, "f", "") + "/sub"], "is under"),
    "spec is a list": (lambda t: ["sweep", _file(t, "s.yaml", "- {name: a}\n- {name: b}\n")],
                       "a sweep spec must be a mapping"),
    "spec hparams": (lambda t: ["sweep", _file(t, "s.yaml", SPEC + "hparams: abc\n")],
                     "hparams: expected an integer, got 'abc'"),
    "spec base": (lambda t: ["sweep", _file(t, "s.yaml", "tasks: [modular]\nbase: [1, 2]\n")],
                  "base: expected a mapping, got [1, 2]"),
    "spec tasks": (lambda t: ["sweep", _file(t, "s.yaml", "tasks: 5\n")],
                   "tasks: expected a task name or mapping or a list of them, got 5"),
    "spec seeds 0": (lambda t: ["sweep", _file(t, "s.yaml", SPEC + "seeds: 0\n")],
                     "seeds: must be >= 1"),
    "spec seeds negative": (lambda t: ["sweep", _file(t, "s.yaml", SPEC + "seeds: [0, -1]\n")],
                            "seeds: a list of seeds"),
    "spec conflicting techniques": (lambda t: ["sweep", _file(t, "s.yaml",
                                                              SPEC + "techniques: [sam+tram]\n")],
                                    "techniques 'sam' and 'tram' both replace"),
    "spec bad lr in grid": (lambda t: ["sweep", _file(t, "s.yaml",
                                                      SPEC + "grid: {optimizer.lr: [0.1, -1]}\n")],
                            "optimizer.lr: must be a finite number >= 0"),
    "spec init_from unknown": (lambda t: ["sweep", _file(t, "s.yaml", SPEC.replace(
        "steps: 4", "init_from: 0123456789ab, steps: 4"))], "init_from: no run '0123456789ab'"),
    "spec non-UTF-8": (lambda t: ["sweep", _file(t, "s.yaml", b"name: \xc3\x28\n")],
                       "sweep spec is not UTF-8 text"),
    "sweep max-runs flag": (lambda t: ["sweep", _file(t, "s.yaml", SPEC + "seeds: 3\n"),
                                       "--max-runs", "2"],
                            "the plan has 3 runs, more than the limit of 2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_exit_2_and_no_run_record(case, tmp_path, capsys):
    argv, expected = CASES[case]
    home = tmp_path / "home"
    line = _one_line_exit_2(["--home", str(home), *argv(tmp_path)], capsys)
    assert expected.format(tmp=tmp_path) in line
    assert _run_ids(home) == set()
    assert not (home / "store.sqlite").exists() or Store(home).sweeps() == []


@pytest.mark.parametrize("which, expected", [
    ("no checkpoint", "init_from: run {id} has no checkpoint"),
    ("failed", "init_from: needs a finished run; run {id} is failed"),
])
def test_init_from_a_run_without_checkpoint_is_refused(finished_runs, which, expected, capsys):
    home, done_id, failed_id = finished_runs
    run_id = done_id if which == "no checkpoint" else failed_id
    before = _run_ids(home)
    line = _one_line_exit_2(["--home", str(home), "run", *TINY, "seed=1",
                             f"init_from={run_id}"], capsys)
    assert expected.format(id=run_id) in line
    assert _run_ids(home) == before


@pytest.mark.parametrize("layout", ["home is a file", "home's parent is a file"])
def test_heldout_home_that_is_a_file(layout, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    home = blocker if layout == "home is a file" else blocker / "home"
    monkeypatch.setenv("HELDOUT_HOME", str(home))
    line = _one_line_exit_2(["runs", "ls"], capsys)
    assert f"HELDOUT_HOME {home}" in line and "give a directory" in line
    assert blocker.read_text() == "not a directory"


def test_real_entry_point_one_line_exit_2(tmp_path):
    """Two checks through a real process: bad input and a HELDOUT_HOME that is a file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for env_home, args in [(tmp_path / "home", ["run", *TINY, "optimizer.lr=-1"]),
                           (blocker, ["run", *TINY])]:
        proc = subprocess.run([sys.executable, "-m", "heldout.cli", *args],
                              env={**os.environ, "HELDOUT_HOME": str(env_home)},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _run_ids(tmp_path / "home") == set()


def test_overrides_may_follow_flags(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--task", "modular", "task.p=7", "--steps", "2",
                 "eval_every=1", "model.hidden=[8]", "--seed", "3", "checkpoint_every=2"]) == 0
    (record,) = Store(home).runs()
    config = record.config
    assert (config["task"]["p"], config["steps"], config["eval_every"], config["seed"],
            config["model"]["hidden"], config["checkpoint_every"]) == (7, 2, 1, 3, [8], 2)


def test_runs_export_creates_a_missing_directory(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", *TINY]) == 0
    target = tmp_path / "new" / "dir" / "runs.csv"
    assert main(["--home", str(home), "runs", "export", "--out", str(target)]) == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["id"] for r in rows] == [r.id for r in Store(home).runs()]


# ----------------------------------------------------------------------------- sweep specs
def test_a_single_technique_string_is_a_list_of_one():
    spec = sweep_from_dict({"tasks": "modular", "techniques": "sam", "selection": "last"})
    assert spec.techniques == ("sam",) and spec.selection == ("last",)
    assert [t["name"] for t in spec.tasks] == ["modular"]


def test_a_huge_grid_is_refused_before_it_is_expanded(tmp_path, capsys):
    values = [round(0.001 * (i + 1), 6) for i in range(1000)]
    spec = tmp_path / "huge.yaml"
    spec.write_text(SPEC + f"grid: {{optimizer.lr: {values}, optimizer.weight_decay: "
                           f"{values}}}\n")
    start = time.perf_counter()
    line = _one_line_exit_2(["--home", str(tmp_path / "h"), "sweep", str(spec)], capsys)
    assert time.perf_counter() - start < 5.0  # expanding it ran for 90 s before the fix
    assert "the plan has 1,000,000 runs, more than the limit of 10,000" in line
    assert _run_ids(tmp_path / "h") == set()


def test_plan_size_counts_what_expand_plans():
    spec = sweep_from_dict({
        "tasks": [{"name": "modular", "p": 23}, {"name": "modular", "p": 29}],
        "techniques": ["erm", "sam", "sam+ema"], "hparams": 3, "seeds": [0, 4],
        "base": {"model": {"name": "mlp", "hidden": [8]}},
        "grid": {"optimizer.weight_decay": [0.0, 0.1]},
    })
    planned = expand(spec)
    # tasks x seeds x (erm: 2 wd x 1 draw, nothing searched; sam, sam+ema: 2 wd x 3 draws)
    assert plan_size(spec) == len(planned) == 2 * 2 * (2 + 6 + 6)
    with pytest.raises(ConfigError, match="the plan has 56 runs, more than the limit of 55"):
        expand(spec, max_runs=55)
    # a grid value that overrides the only searched value makes draws coincide: planned
    # once, so the count is an upper bound
    spec = sweep_from_dict({"tasks": ["modular"], "techniques": "sam", "hparams": 3,
                            "grid": {"techniques.sam.rho": [0.01, 0.02]}})
    assert (plan_size(spec), len(expand(spec))) == (6, 2)


def test_sweep_worker_reports_why_a_run_could_not_be_built(tmp_path):
    """Bug 6: a run that fails while being built in a worker keeps its real reason."""
    store = Store(tmp_path / "h")
    spec = sweep_from_dict({"name": "unbuildable", "tasks": [{"name": "modular", "p": 23}],
                            "base": {"model": "cnn1d", "steps": 2}})
    outcomes = run_sweep(spec, store, workers=1, vectorize=1)
    assert [o.status for o in outcomes] == ["failed"]
    record = store.get_run(outcomes[0].run_id)
    assert record.status == "failed"
    assert record.error.startswith("ValueError: CNN1D needs continuous inputs"), record.error
    assert "worker exited" not in record.error


# ----------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("checkpoint_every, kept", [(1, True), (100, False)])
def test_divergence_seen_at_evaluation_fails_as_non_finite(tmp_path, checkpoint_every, kept):
    """Bug 7: SGD at lr 1e10 with eval_every=1 used to fail inside ECE's bincount."""
    cfg = parse_overrides(RunConfig(), ["task.p=23", "model.hidden=[64]", "steps=20",
                                        "eval_every=1", "optimizer.name=sgd",
                                        "optimizer.lr=1e10",
                                        f"checkpoint_every={checkpoint_every}"])
    store = Store(tmp_path)
    with pytest.raises(RunFailed) as raised:
        execute(cfg, store)
    record = store.get_run(cfg.identity)
    assert record.status == "failed" and "bincount" not in record.error
    assert record.error.startswith("non-finite outputs at evaluation (the model's outputs on "
                                   "split 'train' hold NaN or infinite values")
    assert f"at step {record.step}; the run stopped" in record.error
    assert ("its last good checkpoint is kept" in record.error) is kept
    assert ("no checkpoint was saved before it" in record.error) is not kept
    assert (store.run_dir(cfg.identity) / "checkpoint.pt").exists() is kept
    assert str(raised.value).endswith(record.error)


def test_measures_refuse_non_finite_input():
    probs = torch.tensor([[0.7, 0.3], [float("nan"), 0.5]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        expected_calibration_error(probs, torch.tensor([0, 1]))
    model = torch.nn.Linear(2, 2)
    ctx = EvalContext(model, "test", (torch.tensor([[1.0, -1.0], [float("inf"), 0.0]]),
                                      torch.tensor([0, 1])))
    with pytest.raises(NonFiniteOutputError, match=r"split 'test' hold NaN or infinite values "
                                                   r"\(1 of 2 rows\)"):
        ctx.logits  # noqa: B018 - the property raises


# ----------------------------------------------------------------------------- tables
def test_table_labels_are_escaped_in_markdown_and_csv():
    label = 'sam|rho=0.1\nsecond line, "quoted"'
    table = Table(("rule", "task", "technique", "held_out", "seeds", "missing",
                   "test/accuracy"))
    table.rows.append({"rule": "oracle", "task": "a|b", "technique": label, "held_out": "x\\",
                       "seeds": 2, "missing": 0,
                       "test/accuracy": Interval(0.5, 0.01, 2)})
    row = to_markdown(table, describe=False).splitlines()[2]
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]  # unescaped
    assert len(cells) == len(table.columns)
    assert cells[1] == r"a\|b" and cells[2] == r'sam\|rho=0.1 second line, "quoted"'
    assert cells[3] == "x\\\\"
    parsed = list(csv.reader(io.StringIO(to_csv(table))))
    assert parsed[1][1:4] == ["a|b", label, "x\\"]
