import re

from heldout.flagship import flagship_configs, run_flagship


def test_flagship_configs_are_the_four_variants():
    configs = flagship_configs()
    assert list(configs) == ["softmax CE (AdamW)", "StableMax CE", "⊥AdamW",
                             "AdamW + weight decay 1.0"]
    techniques = [[t.name for t in c.techniques] for c in configs.values()]
    assert techniques == [[], ["stablemax"], ["perp_grad"], ["weight_decay"]]
    assert len({c.identity for c in configs.values()}) == 4


def test_flagship_writes_a_self_contained_report(store, tmp_path):
    path = run_flagship(store, tmp_path / "report", steps=20)
    page = path.read_text()
    assert len(store.runs("done")) == 4
    for label in ("softmax CE (AdamW)", "StableMax CE", "⊥AdamW"):
        assert label in page
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{1000,}'", page)) >= 1
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside
