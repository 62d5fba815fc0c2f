"""The HTML reports in a real headless Chromium: no console error, every image renders, and
strings from configs are escaped (never executed)."""

import os
import shutil

import pytest

from heldout.experiments.sweep import run_sweep, sweep_from_dict
from heldout.report.html import write_report
from heldout.report.sweep import write_sweep_report
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import tiny_config
from tests.experiments.test_sweep import SPEC

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("HELDOUT_REQUIRE_BROWSER") == "1"  # set by .ci/run
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if CHROMIUM is None:
    if REQUIRED:
        raise RuntimeError("HELDOUT_REQUIRE_BROWSER=1 but no chromium on PATH")
    pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)",
                allow_module_level=True)

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<script>console.error('injected')</script><img src=x onerror=alert(1)>"


def _open(path):
    """Load a page; return (console errors, page errors, dialogs, image states, text)."""
    errors, page_errors, dialogs = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        text = page.inner_text("body")
        browser.close()
    return errors, page_errors, dialogs, images, text


def test_run_report_in_chromium(tmp_path):
    store = Store(tmp_path / "home")
    cfg = tiny_config(f"name={EVIL}")
    execute(cfg, store)
    path = write_report(store, [cfg.identity], tmp_path / "report", title=EVIL)
    errors, page_errors, dialogs, images, text = _open(path)
    assert errors == [] and page_errors == [] and dialogs == []
    assert images and all(done and w > 100 and h > 100 for done, w, h in images)
    assert EVIL in text  # shown as text, not run


def test_sweep_report_in_chromium(tmp_path):
    store = Store(tmp_path / "home")
    spec = sweep_from_dict({**SPEC, "hparams": 2, "seeds": [0, 1],
                            "tasks": [{"name": "modular", "p": 11, "val_fraction": 0.2}]})
    run_sweep(spec, store, workers=2)
    path = write_sweep_report(store, spec.name, tmp_path / "report")
    errors, page_errors, dialogs, images, text = _open(path)
    assert errors == [] and page_errors == [] and dialogs == []
    assert len(images) >= 2 and all(done and w > 100 for done, w, _ in images)
    assert "train_domain_val" in text and "Leaderboard" in text
    assert (tmp_path / "report" / "tables.csv").read_text().startswith("rule,")
