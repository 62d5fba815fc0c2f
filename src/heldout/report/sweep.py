"""The HTML report of a sweep: leaderboards with confidence intervals under each named
selection rule, learning curves, per-domain and worst-group breakdowns, reliability diagrams
and the claims ledger. Tables are also written as CSV and Markdown beside the page."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from heldout.experiments.aggregate import adaptation_table, aggregate, to_csv, to_markdown
from heldout.experiments.model_selection import SELECTION_RULES, record_from_store, select_all
from heldout.report.html import claims_html, image_html, page_html, png_base64, table_html
from heldout.store.sqlite import Store

__all__ = ["sweep_records", "write_sweep_report"]


def sweep_records(store: Store, sweep: str) -> list[dict[str, Any]]:
    """Selection records of a sweep's finished runs."""
    out = []
    for record, meta in store.sweep_runs(sweep):
        if record.status != "done":
            continue
        out.append(record_from_store(
            store, record.id, task=meta["task"], technique=meta["technique"],
            hparams=meta["hparams"], seed=meta["seed"], held_out=meta["held_out"],
            domains=meta["domains"]))
    return out


def _leaderboard(table: Any) -> str:
    e = html.escape
    rows = []
    for row in table.rows:
        cells = []
        for column in table.columns:
            value = row.get(column, "")
            if hasattr(value, "mean"):
                scale = 100.0
                half = value.half_width
                cells.append(e(f"{value.mean * scale:.1f} ± {half * scale:.1f}"
                               if half == half else f"{value.mean * scale:.1f}"))
            else:
                cells.append(e(str(value)))
        rows.append(cells)
    return table_html([str(c) for c in table.columns], rows)


def _adaptation_section(store: Store, info: dict[str, Any], selections: Sequence[Any],
                        out: Path) -> str | None:
    """The before/after table of the sweep's test-time adapters (``adapt`` in its spec), also
    written as ``adaptation.csv``."""
    from heldout.experiments.sweep import adaptation_configs, sweep_from_dict
    from heldout.run.adaptation import adaptation_id

    spec_data = info["spec"]
    if not spec_data.get("adapt"):
        return None
    spec = sweep_from_dict({k: v for k, v in spec_data.items() if k != "name"})
    results: dict[tuple[str, str], Any] = {}
    names = []
    for s in selections:
        if s.run_id is None or not s.held_out:
            continue
        done = {a["id"]: a for a in store.adaptations(s.run_id) if a["status"] == "done"}
        for cfg in adaptation_configs(spec, s.run_id, s.held_out):
            label = _adapter_label(cfg.adapter)
            names.append(label)
            row = done.get(adaptation_id(cfg.to_dict(s.run_id)))
            if row is not None:
                results[(s.run_id, label)] = row["metrics"]
    table = adaptation_table(selections, results, list(dict.fromkeys(names)))
    (out / "adaptation.csv").write_text(to_csv(table), encoding="utf-8")
    if not table.rows:
        return ("<h2>Test-time adaptation</h2><p>No adaptation of the chosen runs is "
                "recorded yet (run the sweep again to adapt its finished runs).</p>")
    return ("<h2>Test-time adaptation: before → after</h2><p>Accuracy (%) on the held-out "
            "test domains of the runs each rule chose (their final weights), before (the "
            "source model) and after adapting at test time, mean ± 95% confidence "
            "half-width over seeds; <i>change</i> is paired per seed.</p>"
            + _leaderboard(table))


def _adapter_label(component: Any) -> str:
    """The adapter's name with the hyper-parameters that differ from its defaults."""
    from heldout.registry import ADAPTERS

    defaults = ADAPTERS.get(component.name).defaults()
    params = ", ".join(f"{k}={v}" for k, v in sorted(component.params.items())
                       if defaults.get(k, object()) != v)
    return f"{component.name}({params})" if params else component.name


def _curves_figure(store: Store, selections: Sequence[Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [s for s in selections if s.rule == "train_domain_val" and s.run_id]
    if not chosen:
        return None
    by_technique: dict[str, list[list[tuple[int, float]]]] = defaultdict(list)
    for selection in chosen:
        curve = store.history(selection.run_id).get("test/accuracy", [])
        if curve:
            by_technique[selection.technique].append(curve)
    fig, ax = plt.subplots(figsize=(8, 4))
    for technique, curves in by_technique.items():
        steps = [s for s, _ in curves[0]]
        mean = [sum(c[i][1] for c in curves if i < len(c)) / len(curves)
                for i in range(len(steps))]
        ax.plot(steps, mean, label=f"{technique} ({len(curves)} runs)")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (held-out domains)")
    ax.set_title("learning curves of the runs chosen by training-domain validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    data = png_base64(fig)
    plt.close(fig)
    return data


def _reliability_figure(store: Store, selections: Sequence[Any]) -> str | None:
    """Reliability diagrams of one chosen checkpoint per technique (first held-out set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heldout.config import config_from_dict
    from heldout.measures.calibration import reliability_diagram
    from heldout.run.assembly import build

    firsts: dict[str, Any] = {}
    for selection in selections:
        if selection.rule == "train_domain_val" and selection.run_id and selection.checkpoint:
            firsts.setdefault(selection.technique, selection)
    if not firsts:
        return None
    fig, axes = plt.subplots(1, len(firsts), figsize=(3.2 * len(firsts), 3.2), squeeze=False)
    for ax, (technique, selection) in zip(axes[0], firsts.items(), strict=True):
        record = store.get_run(selection.run_id)
        trainer = build(config_from_dict(record.config), store=store,
                        checkpoint_path=selection.checkpoint)
        trainer.resume()
        test = trainer.eval_data["test"]
        with torch.no_grad():
            probs = torch.softmax(trainer.model.eval()(test.x).double(), dim=-1)
        diagram = reliability_diagram(probs, test.y)
        centers = [(lo + hi) / 2 for lo, hi in zip(diagram["lower"], diagram["upper"],
                                                    strict=True)]
        ax.bar(centers, [a if a == a else 0 for a in diagram["accuracy"]], width=0.09,
               edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_title(f"{technique}, seed {selection.seed}", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    fig.tight_layout()
    data = png_base64(fig)
    plt.close(fig)
    return data


def write_sweep_report(store: Store, sweep: str, out: Path,
                       title: str | None = None) -> Path:
    """Write ``out/index.html`` (plus ``tables.csv`` and ``tables.md``) for a sweep."""
    info = store.get_sweep(sweep)
    rules = [r for r in info["spec"].get("selection", list(SELECTION_RULES))
             if r in SELECTION_RULES]
    records = sweep_records(store, info["id"])
    selections = select_all(records, rules, strict=False)
    table = aggregate(selections)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.csv").write_text(to_csv(table), encoding="utf-8")
    (out / "tables.md").write_text(to_markdown(table), encoding="utf-8")
    e = html.escape
    members = store.sweep_runs(info["id"])
    counts: dict[str, int] = defaultdict(int)
    for record, _ in members:
        counts[record.status] += 1
    rule_list = "".join(f"<li><b>{e(r)}</b>: {e(SELECTION_RULES.get(r).summary)}</li>"
                        for r in rules)
    body = [
        f"<p>{len(members)} runs: "
        + e(", ".join(f"{k} {v}" for k, v in sorted(counts.items()))) + "</p>",
        f"<h2>Leaderboard</h2><p>Test metrics of the runs each rule chose, mean ± 95% "
        f"confidence half-width over seeds (Student t), in percent; the <i>average</i> rows "
        f"average over held-out domains. Rules:</p><ul>{rule_list}</ul>",
        _leaderboard(table),
    ]
    per_domain = [
        [e(s.rule), e(s.technique), e("+".join(s.held_out)), str(s.seed),
         e(", ".join(f"{k.split('/')[0].removeprefix('test@')}: {v * 100:.1f}"
                     for k, v in sorted(s.test.items())
                     if k.startswith("test@") and k.endswith("/accuracy")))]
        for s in selections if s.run_id
    ]
    if any(row[-1] for row in per_domain):
        body.append("<h2>Per-domain test accuracy of the chosen runs</h2>"
                    + table_html(["rule", "technique", "held out", "seed",
                                  "accuracy per domain (%)"], per_domain))
    adapted = _adaptation_section(store, info, selections, out)
    if adapted:
        body.append(adapted)
    curves = _curves_figure(store, selections)
    if curves:
        body.append(image_html("Learning curves", curves))
    reliability = _reliability_figure(store, selections)
    if reliability:
        body.append(image_html("Reliability diagrams (held-out test data)", reliability))
    body.append(claims_html(store))
    missing = [s for s in selections if s.missing]
    if missing:
        body.append("<h2>Gaps</h2>" + table_html(
            ["rule", "technique", "held out", "seed", "missing"],
            [[e(s.rule), e(s.technique), e("+".join(s.held_out)), str(s.seed),
              e("; ".join(s.missing))] for s in missing]))
    page = page_html(title or f"heldout sweep {info['name']}",
                     f"Sweep {info['name']} ({info['id']}).", "".join(body), store)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
