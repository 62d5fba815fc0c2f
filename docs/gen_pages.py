"""Generated parts of the docs site: the claims ledger's verdict table and the catalog.

An mkdocs hook (``hooks:`` in mkdocs.yml): on a page, the marker ``<!-- ledger-table -->``
becomes the verdict table of ``docs/ledger.json`` and ``<!-- catalog-table -->`` the catalog of
the 77 papers with the registered components that implement each. Neither is typed by hand.

``docs/ledger.json`` holds the verdicts a ledger run recorded in a store; refresh it with::

    HELDOUT_HOME=/tmp/ledger heldout claims run --scale ci
    python docs/gen_pages.py ledger --home /tmp/ledger --command "heldout claims run --scale ci"
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

LEDGER_JSON = Path(__file__).with_name("ledger.json")
MARKERS = {"<!-- ledger-table -->": "ledger", "<!-- catalog-table -->": "catalog",
           "<!-- cli-help -->": "cli", "<!-- store-schema -->": "store"}
CLI_COMMANDS = ("", "run", "resume", "list", "runs ls", "runs show", "runs export",
                "claims list", "claims run", "sweep", "flagship", "measure", "report",
                "adapt")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def export_ledger(homes: list[str | Path], command: str) -> dict[str, Any]:
    """The latest recorded verdict of each claim in the stores at ``homes`` (claims run in
    parallel processes may use one store each), as ledger.json."""
    import torch

    from heldout.store import Store

    latest: dict[str, dict[str, Any]] = {}
    for home in homes:
        for row in Store(home).claim_results():
            if row["claim"] not in latest or row["created"] > latest[row["claim"]]["created"]:
                latest[row["claim"]] = row
    rows = [latest[name] for name in sorted(latest)]
    keep = ("claim", "verdict", "summary", "seeds", "scale", "numbers")
    return {
        "command": command,
        "recorded": datetime.datetime.fromtimestamp(max((r["created"] for r in rows), default=0),
                                                    datetime.UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, Python "
                   f"{platform.python_version()}, torch {torch.__version__}",
        "claims": [{k: r[k] for k in keep} for r in rows],
    }


def ledger_table(ledger: dict[str, Any]) -> str:
    """A Markdown table with one row per registered claim: its paper, statement and the
    verdict ``ledger`` recorded for it ("not run" when it recorded none)."""
    from heldout.registry import CLAIMS, paper

    recorded = {row["claim"]: row for row in ledger["claims"]}
    lines = ["| claim | paper | statement | verdict | seeds | scale | numbers |",
             "|---|---|---|---|---|---|---|"]
    for entry in CLAIMS.entries():
        cited = ", ".join(f"#{n} {paper(n).short}" for n in entry.papers) or "-"
        row = recorded.get(entry.name)
        if row is None:
            verdict, seeds, scale, summary = "not run", "-", "-", "-"
        else:
            verdict, scale, summary = f"**{row['verdict']}**", row["scale"], row["summary"]
            seeds = ", ".join(str(s) for s in row["seeds"])
        lines.append(f"| `{entry.name}` | {_cell(cited)} | {_cell(entry.cls.statement)} | "
                     f"{verdict} | {seeds} | {scale} | {_cell(summary)} |")
    unknown = sorted(set(recorded) - set(CLAIMS.names()))
    if unknown:
        raise ValueError(f"ledger.json records claims that are not registered: {unknown}")
    return "\n".join(lines)


def ledger_page(ledger: dict[str, Any]) -> str:
    """The ledger table with the line that says which run produced it."""
    return (f"Produced by `{ledger['command']}` (recorded {ledger['recorded']}, "
            f"{ledger['machine']}).\n\n{ledger_table(ledger)}")


def catalog_table() -> str:
    """A Markdown table of the 77 catalog papers and the components that implement each."""
    from heldout.registry import implementations, papers

    rows, covered = [], 0
    for p in papers():
        arxiv = f"[{p.arxiv}](https://arxiv.org/abs/{p.arxiv})" if p.arxiv else "-"
        found = implementations(p.number)
        covered += bool(found)
        names = ", ".join(f"`{name}`" for name in found) or "-"
        rows.append(f"| {p.number} | {_cell(p.title)} | {arxiv} | {p.year or '-'} | {names} |")
    return (f"{covered} of the {len(rows)} papers have at least one registered component.\n\n"
            "| # | paper | arXiv | year | implemented by (kind:name) |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def cli_help(command: str) -> str:
    """What ``heldout COMMAND --help`` prints (at a width of 100 columns)."""
    from heldout.cli import main

    out = io.StringIO()
    with (mock.patch.dict(os.environ, {"COLUMNS": "100"}), contextlib.redirect_stdout(out),
          contextlib.suppress(SystemExit)):  # argparse exits after printing the help
        main([*command.split(), "--help"])
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """Every command's ``--help``, as generated text under one heading each."""
    return "\n\n".join(
        f"### `{' '.join(['heldout', *command.split(), '--help'])}`\n\n"
        f"```text\n{cli_help(command)}\n```" for command in CLI_COMMANDS)


def store_schema() -> str:
    """The tables and columns of a new, empty store, as SQLite reports them."""
    from heldout.store import Store

    with tempfile.TemporaryDirectory() as home:
        path = Store(home).path
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = [name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%' ORDER BY rowid")]
            parts = []
            for table in tables:
                rows = ["| column | type | not null | default | key |", "|---|---|---|---|---|"]
                for _, name, kind, notnull, default, key in db.execute(
                        f"PRAGMA table_info({table})"):
                    rows.append(f"| `{name}` | {kind} | {'yes' if notnull else ''} | "
                                f"{'' if default is None else _cell(default)} | "
                                f"{'primary' if key else ''} |")
                parts.append(f"### `{table}`\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs hook: fill in the generated parts."""
    for marker, what in MARKERS.items():
        if marker in markdown:
            if what == "ledger":
                text = ledger_page(json.loads(LEDGER_JSON.read_text(encoding="utf-8")))
            else:
                text = {"catalog": catalog_table, "cli": cli_reference,
                        "store": store_schema}[what]()
            markdown = markdown.replace(marker, text)
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write docs/ledger.json from a store.")
    parser.add_argument("what", choices=["ledger"])
    parser.add_argument("--home", required=True, action="append",
                        help="a store the ledger run wrote to (repeat for several)")
    parser.add_argument("--command", required=True, help="the command that ran the claims")
    parser.add_argument("--out", default=str(LEDGER_JSON))
    args = parser.parse_args(argv)
    ledger = export_ledger(args.home, args.command)
    Path(args.out).write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n",
                              encoding="utf-8")
    print(f"wrote {args.out}: {len(ledger['claims'])} claims")


if __name__ == "__main__":
    main()
