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

__all__ = [
    "claims_html",
    "configs_html",
    "first_step_reaching",
    "image_html",
    "page_html",
    "png_base64",
    "run_label",
    "table_html",
    "write_report",
]

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


def png_base64(fig: Any) -> str:
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
    images.append(("Learning curves", png_base64(fig)))
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
        reach = first_step_reaching(store.history(r.id).get("test/accuracy", []), 0.95)

        def num(key: str, fmt: str = "{:.4f}", final=final) -> str:
            return fmt.format(final[key]) if key in final else "–"

        rows.append([
            e(names[r.id]), f"<code>{e(r.id)}</code>", e(r.status), str(r.step),
            num("train/accuracy"), num("test/accuracy"),
            "never" if reach is None else str(reach),
            num("train/loss", "{:.3g}"), num("test/loss", "{:.3g}"), num("test/ece"),
            "–" if r.seconds is None else f"{r.seconds:.1f}",
        ])
    header = ["run", "id", "status", "steps", "train acc", "test acc", "step test ≥ 95%",
              "train loss", "test loss", "test ECE", "seconds"]
    body = (f"<h2>Results</h2>{table_html(header, rows)}"
            + "".join(image_html(c, d) for c, d in _curves(histories))
            + (claims_html(store) if claims else "") + configs_html(records, names))
    page = page_html(title, intro, body, store)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; ``header`` is escaped here, cells must be escaped HTML already."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image_html(caption: str, png_base64: str) -> str:
    e = html.escape
    return (f"<h2>{e(caption)}</h2><img alt='{e(caption)}' "
            f"src='data:image/png;base64,{png_base64}'>")


def claims_html(store: Store) -> str:
    """The claims ledger: the latest verdict of every claim run into ``store``."""
    e = html.escape
    rows = [[e(c["claim"]), f"<span class='{c['verdict'].replace(' ', '-')}'>"
             f"{e(c['verdict'])}</span>", e(c["summary"]), e(str(c["seeds"])), e(c["scale"])]
            for c in store.claim_results()]
    if not rows:
        return ""
    return "<h2>Claims ledger</h2>" + table_html(
        ["claim", "verdict", "numbers", "seeds", "scale"], rows)


def configs_html(records: Sequence[Any], names: Mapping[str, str]) -> str:
    e = html.escape
    return "<h2>Configs</h2>" + "".join(
        f"<details><summary>{e(names[r.id])} — <code>{e(r.id)}</code></summary><pre>"
        f"{e(json.dumps(r.config, indent=2, sort_keys=True))}</pre></details>"
        for r in records)


def page_html(title: str, intro: str, body: str, store: Store) -> str:
    """A whole self-contained page: inline CSS, no scripts, no outside requests."""
    from heldout import __version__

    e = html.escape
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(title)}</h1><p>{e(intro)}</p>{body}"
        f"<p><small>heldout {e(__version__)}, {e(stamp)}; store {e(str(store.path))}"
        f"</small></p></body></html>"
    )
