"""The documentation site: every Python example on its pages runs, and the generated pages
(the claims ledger, the catalog) say what the recorded verdicts and the registry say."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest

from heldout.registry import CLAIMS, REGISTRIES, implementations, papers

DOCS = Path(__file__).resolve().parents[1] / "docs"
_FENCE = re.compile(
    r'^```python(?:[ \t]+title="(?P<title>[^"]+)")?[ \t]*\n(?P<code>.*?)^```[ \t]*$',
    re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[tuple[str | None, str]]:
    """The page's ```python blocks in order, as (title, code); the title names a file."""
    return [(m["title"], m["code"]) for m in _FENCE.finditer(page.read_text(encoding="utf-8"))]


PAGES = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory and store of its own; registries and imported modules restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HELDOUT_HOME", str(tmp_path / "home"))
    monkeypatch.syspath_prepend(str(tmp_path))
    for registry in REGISTRIES.values():
        registry.load_builtins()
    entries = {kind: dict(registry._entries) for kind, registry in REGISTRIES.items()}
    modules = set(sys.modules)
    yield tmp_path
    for kind, registry in REGISTRIES.items():
        registry._entries = entries[kind]
    for name in set(sys.modules) - modules:
        if str(tmp_path) in (getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, sandbox):
    """Titled blocks are files (written first); the others run in order as one script; then
    the test functions of every ``test_*.py`` file on the page run."""
    blocks = python_blocks(DOCS / page)
    for title, code in blocks:
        if title:
            path = sandbox / title
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code, encoding="utf-8")
    script = types.ModuleType(f"docs_{Path(page).stem.replace('-', '_')}")
    sys.modules[script.__name__] = script
    try:
        for title, code in blocks:
            if not title:
                exec(compile(code, f"{page}", "exec"), script.__dict__)
    finally:
        del sys.modules[script.__name__]
    tests = [title for title, _ in blocks if title and Path(title).name.startswith("test_")]
    for title in tests:
        module = importlib.import_module(".".join(Path(title).with_suffix("").parts))
        functions = [f for name, f in vars(module).items() if name.startswith("test_")]
        assert functions, f"{title} on {page} defines no test"
        for function in functions:
            function()


def _generator():
    spec = importlib.util.spec_from_file_location("docs_gen_pages", DOCS / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(table: str) -> dict[str, list[str]]:
    """Rows of a generated Markdown table by their first cell (backticks stripped)."""
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table.splitlines()
            if line.startswith("| ")]
    return {cells[0].strip().strip("`"): [c.strip() for c in cells] for cells in rows[1:]}


def test_ledger_table_is_the_recorded_verdicts_of_every_claim():
    ledger = json.loads((DOCS / "ledger.json").read_text(encoding="utf-8"))
    assert ledger["command"].startswith("heldout claims run")
    rows = _table_rows(_generator().ledger_table(ledger))
    assert sorted(rows) == CLAIMS.names()  # every registered claim, and nothing else
    recorded = {row["claim"]: row for row in ledger["claims"]}
    assert recorded, "docs/ledger.json records no verdict"
    for name, cells in rows.items():
        row = recorded.get(name)
        if row is None:
            assert cells[3] == "not run"
            continue
        assert cells[3] == f"**{row['verdict']}**"
        assert cells[4] == ", ".join(str(s) for s in row["seeds"])
        assert cells[5] == row["scale"]
        assert cells[6] == row["summary"].replace("|", "\\|")


def test_ledger_export_reads_a_store(store):
    from heldout.claims import Verdict, record

    record(store, Verdict("softmax-collapse", "holds", "a | b", {"margin": 21}, (0,), (), "ci"))
    ledger = _generator().export_ledger([store.home], "heldout claims run softmax-collapse")
    assert [(r["claim"], r["verdict"], r["numbers"]) for r in ledger["claims"]] == [
        ("softmax-collapse", "holds", {"margin": 21})]
    cells = _table_rows(_generator().ledger_table(ledger))["softmax-collapse"]
    assert cells[3:7] == ["**holds**", "0", "ci", "a \\| b"]


def test_catalog_table_lists_every_paper_with_its_components():
    table = _generator().catalog_table()
    rows = _table_rows(table)
    assert [int(n) for n in rows] == [p.number for p in papers()] == list(range(1, 78))
    for p in papers():
        names = [n.strip("`") for n in rows[str(p.number)][4].split(", ") if n != "-"]
        assert names == implementations(p.number)
    covered = sum(bool(implementations(p.number)) for p in papers())
    assert table.startswith(f"{covered} of the 77 papers")
    assert "technique:perp_grad" in rows["9"][4]


def test_api_pages_read_the_house_docstrings():
    spec = importlib.util.spec_from_file_location("docs_griffe", DOCS / "griffe_heldout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = ("Loop::\n\n    step\n\nSee :class:`~heldout.core.State`, :func:`heldout.core.evaluate`."
            "\n\nExample:\n    >>> 1\n    1\n")
    assert module.rewrite(text) == ("Loop:\n\n    step\n\nSee `State`, `heldout.core.evaluate`."
                                    "\n\nExamples:\n    >>> 1\n    1\n")
