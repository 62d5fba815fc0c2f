import json

import pytest

from heldout.cli import main
from heldout.store import Store

TINY = ["task=modular", "task.p=23", "model.hidden=[32]", "steps=6", "eval_every=3"]


def test_list_components(capsys):
    assert main(["list", "techniques"]) == 0
    out = capsys.readouterr().out
    assert "perp_grad" in out and "sam" in out and "[#9]" in out
    assert main(["list", "models"]) == 0
    assert "hidden=(200, 200)" in capsys.readouterr().out


def test_list_papers_prints_all_77_with_implementations(capsys):
    assert main(["list", "papers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 77
    row9 = next(line for line in lines if line.startswith("#9 "))
    assert "technique:stablemax" in row9 and "2501.04697" in row9


def test_run_show_export(tmp_path, capsys):
    home = str(tmp_path / "home")
    assert main(["--home", home, "run", *TINY, "--technique", "perp_grad"]) == 0
    out = capsys.readouterr().out
    run_id = out.split()[1]
    assert "store.sqlite" in out and f"run {run_id} done" in out
    assert main(["--home", home, "runs", "ls"]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["--home", home, "runs", "show", run_id]) == 0
    shown = capsys.readouterr().out
    assert "status   done" in shown and "test/accuracy" in shown
    target = tmp_path / "runs.json"
    assert main(["--home", home, "runs", "export", "--format", "json", "--out",
                 str(target)]) == 0
    assert json.loads(target.read_text())[0]["id"] == run_id
    assert main(["--home", home, "run", *TINY, "--technique", "perp_grad"]) == 0
    assert "already done" in capsys.readouterr().out


def test_yaml_config_run(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("task: {name: modular, p: 23}\nmodel: {name: mlp, hidden: [16]}\n"
                    "steps: 4\neval_every: 2\n")
    assert main(["--home", str(tmp_path / "h"), "run", str(path), "seed=2"]) == 0
    (record,) = Store(tmp_path / "h").runs()
    assert record.seed == 2 and record.config["model"]["hidden"] == [16]


@pytest.mark.parametrize("args, message", [
    (["run", "task=nope"], "task: unknown task 'nope'; valid tasks:"),
    (["run", "--technique", "sharp"], "unknown technique 'sharp'; valid techniques:"),
    (["run", "steps=x"], "steps: expected an integer"),
    (["run", "bogus=1"], "bogus: unknown config key"),
    (["runs", "show", "nosuchrun"], "no run 'nosuchrun'"),
    (["resume", "nosuchrun"], "no run 'nosuchrun'"),
    (["list", "techniques", "zz*"], "no techniques match"),
    (["claims", "run", "no-such-claim"], "unknown claim 'no-such-claim'; valid claims:"),
])
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert main(["--home", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_failed_run_exits_1(tmp_path, capsys):
    args = ["--home", str(tmp_path), "run", *TINY, "optimizer.name=sgd", "optimizer.lr=1e30"]
    assert main(args) == 1
    assert "non-finite loss" in capsys.readouterr().err


def test_claims_list_and_run(tmp_path, capsys):
    home = str(tmp_path)
    assert main(["--home", home, "claims", "run", "softmax-collapse"]) == 0
    assert "softmax-collapse: HOLDS" in capsys.readouterr().out
    assert main(["--home", home, "claims", "list"]) == 0
    listing = capsys.readouterr().out
    assert "softmax-collapse" in listing and "holds" in listing and "not run" in listing


def test_report_command(tmp_path, capsys):
    home = str(tmp_path / "h")
    main(["--home", home, "run", *TINY])
    run_id = Store(tmp_path / "h").runs()[0].id
    capsys.readouterr()
    assert main(["--home", home, "report", run_id, "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert run_id in page and "data:image/png;base64," in page


def test_measure_command_stores_post_hoc_measures(tmp_path, capsys):
    home = str(tmp_path / "h")
    main(["--home", home, "run", *TINY, "--technique", "ema"])
    run_id = Store(tmp_path / "h").runs()[0].id
    capsys.readouterr()
    assert main(["--home", home, "measure", run_id, "--measure", "calibration", "--split",
                 "test", "--set", "n_bins=5"]) == 0
    out = capsys.readouterr().out
    assert "test/mce" in out and "train/mce" not in out
    final = Store(tmp_path / "h").final_metrics(run_id)
    assert "test/brier" in final and "test/accuracy" in final  # added at the last step
    assert main(["--home", home, "measure", run_id, "--measure", "calibration", "--set",
                 "n_bins=zero"]) == 2
    assert "measures[0].n_bins: expected an integer" in capsys.readouterr().err
    assert main(["--home", home, "measure", run_id, "--measure", "ece", "--split",
                 "nope"]) == 2
    assert "unknown split 'nope'" in capsys.readouterr().err


def test_measure_rank_by_hand(tmp_path, capsys):
    home = str(tmp_path / "h")
    for lr in ("0.001", "0.01", "0.1"):
        assert main(["--home", home, "run", *TINY, f"optimizer.lr={lr}"]) == 0
    store = Store(tmp_path / "h")
    ids = [r.id for r in store.runs()]
    capsys.readouterr()
    assert main(["--home", home, "measure", "rank", *ids, "--measure", "train/loss",
                 "--measure", "test/ece", "--axis", "optimizer.lr"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["measure", "runs", "tau", "psi"]
    finals = [store.final_metrics(i) for i in ids]
    gaps, losses = [f["gap/accuracy"] for f in finals], [f["train/loss"] for f in finals]
    # Kendall tau-a over the 3 pairs, by hand
    concordance = sum(
        (1 if (losses[i] - losses[j]) * (gaps[i] - gaps[j]) > 0 else -1
         if (losses[i] - losses[j]) * (gaps[i] - gaps[j]) < 0 else 0)
        for i in range(3) for j in range(i + 1, 3)
    ) / 3
    row = next(line for line in out if line.startswith("train/loss"))
    assert float(row.split()[2]) == pytest.approx(concordance, abs=1e-3)
    assert main(["--home", home, "measure", "rank", ids[0], "--measure", "x"]) == 2
    assert main(["--home", home, "measure", "rank", *ids, "--measure", "test/nope"]) == 2
    assert "no run has test/nope" in capsys.readouterr().err
