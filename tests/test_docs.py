"""The documentation site: every Python example on its pages runs, and the generated pages
(the claims ledger, the catalog) say what the recorded verdicts and the registry say."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

from heldout.registry import REGISTRIES

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
