"""A self-contained HTML report of runs: results table, learning curves, claims.

Plots are PNGs embedded as data URIs, so the page is one file with no outside requests. Every
string that comes from a config, a run or a user is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from heldout.store.sqlite import Store

__all__ = ["first_step_reaching", "run_label", "write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.holds{color:#17692b}.does-not-hold{color:#a11}.inconclusive{color:#8a6d00}
code{background:#f5f5f5;padding:0 .2rem}details{margin:.3rem 0}pre{white-space:pre-wrap}
"""


def run_label(config: Mapping[str, Any], name: str | None = None) -> str:
    """A short human label: the run's name, else its techniques (or "baseline")."""
    if name:
        return name
    techniques = [t["name"] for t in config.get("techniques", [])]
    return " + ".join(techniques) if techniques else "baseline"


def first_step_reaching(curve: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """The first logged step whose value is >= ``threshold`` (None if never)."""
    return next((step for step, value in curve if value >= threshold), None)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


PANELS = (
    ("train/accuracy", "train accuracy", False),
    ("test/accuracy", "test accuracy", False),
    ("train/step_loss", "training loss (each run's own objective)", True),
    ("test/loss", "test loss (softmax cross-entropy)", True),
    ("train/collapse", "train share in Softmax Collapse (float32)", False),
    ("train/nlm_alignment", "train cos(-grad, weights)", False),
)


def _curves(histories: Mapping[str, dict[str, list[tuple[int, float]]]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = {key for history in histories.values() for key in history}
    panels = [panel for panel in PANELS if panel[0] in logged]
    if not panels:
        return []
    rows = -(-len(panels) // 2)
    images = []
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, title, log) in zip(axes.flat, panels, strict=False):
        for label, history in histories.items():
            curve = history.get(key, [])
            if curve:
                steps, values = zip(*curve, strict=True)
                ax.plot(steps, values, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[min(1, len(panels) - 1)].legend(loc="best", fontsize=8)
    fig.tight_layout()
    images.append(("Learning curves", _png(fig)))
    plt.close(fig)
    return images


def write_report(
    store: Store,
    run_ids: Sequence[str],
    out: Path,
    *,
    title: str = "heldout report",
    intro: str = "",
    labels: Mapping[str, str] | None = None,
    claims: bool = True,
) -> Path:
    """Write ``out/index.html`` for ``run_ids`` and return its path."""
    e = html.escape
    out.mkdir(parents=True, exist_ok=True)
    records = [store.get_run(r) for r in run_ids]
    labels = dict(labels or {})
    names = {r.id: labels.get(r.id) or run_label(r.config, r.name) for r in records}
    histories = {names[r.id]: store.history(r.id) for r in records}

    rows = []
    for r in records:
        final = store.final_metrics(r.id)
        history = store.history(r.id)
        reach = first_step_reaching(history.get("test/accuracy", []), 0.95)

        def num(key: str, fmt: str = "{:.4f}", final=final) -> str:
            return fmt.format(final[key]) if key in final else "–"

        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in [
                e(names[r.id]), f"<code>{e(r.id)}</code>", e(r.status), str(r.step),
                num("train/accuracy"), num("test/accuracy"),
                "never" if reach is None else str(reach),
                num("train/loss", "{:.3g}"), num("test/loss", "{:.3g}"), num("test/ece"),
                "–" if r.seconds is None else f"{r.seconds:.1f}",
            ]) + "</tr>"
        )
    header = ["run", "id", "status", "steps", "train acc", "test acc", "step test ≥ 95%",
              "train loss", "test loss", "test ECE", "seconds"]
    table = ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
             + "".join(rows) + "</table>")

    images = "".join(
        f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
        for caption, data in _curves(histories)
    )
    configs = "".join(
        f"<details><summary>{e(names[r.id])} — <code>{e(r.id)}</code></summary><pre>"
        f"{e(json.dumps(r.config, indent=2, sort_keys=True))}</pre></details>"
        for r in records
    )
    claims_html = ""
    results = store.claim_results() if claims else []
    if results:
        items = []
        for c in results:
            css = c["verdict"].replace(" ", "-")
            items.append(
                f"<tr><td>{e(c['claim'])}</td><td class='{css}'>{e(c['verdict'])}</td>"
                f"<td>{e(c['summary'])}</td><td>{e(str(c['seeds']))}</td>"
                f"<td>{e(c['scale'])}</td></tr>"
            )
        claims_html = ("<h2>Claims ledger</h2><table><tr><th>claim</th><th>verdict</th>"
                       "<th>numbers</th><th>seeds</th><th>scale</th></tr>"
                       + "".join(items) + "</table>")
    from heldout import __version__

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(title)}</h1><p>{e(intro)}</p><h2>Results</h2>{table}{images}"
        f"{claims_html}<h2>Configs</h2>{configs}"
        f"<p><small>heldout {e(__version__)}, {e(stamp)}; store {e(str(store.path))}"
        f"</small></p></body></html>"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
