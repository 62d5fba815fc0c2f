import pytest

from heldout.registry import (
    CLAIMS,
    MEASURES,
    MODELS,
    REGISTRIES,
    TASKS,
    TECHNIQUES,
    Registry,
    UnknownNameError,
    implementations,
    paper,
    papers,
)


def test_papers_catalog_has_77_rows_in_order():
    rows = papers()
    assert [p.number for p in rows] == list(range(1, 78))
    assert rows[8].title == "Grokking at the Edge of Numerical Stability"
    assert rows[8].arxiv == "2501.04697"
    assert paper(47).title == "Pointer Networks"


def test_unknown_paper_number():
    with pytest.raises(UnknownNameError, match="1..77"):
        paper(78)


@pytest.mark.parametrize("registry", list(REGISTRIES.values()), ids=list(REGISTRIES))
def test_unknown_name_lists_valid_names(registry):
    with pytest.raises(UnknownNameError) as err:
        registry.get("no-such-thing")
    message = str(err.value)
    assert "no-such-thing" in message
    for name in registry.names():
        assert name in message


def test_first_components_are_registered():
    assert {"stablemax", "perp_grad", "sam", "ghost_bn", "ema", "weight_decay",
            "label_smoothing"} <= set(TECHNIQUES.names())
    assert {"accuracy", "loss", "gap", "ece", "softmax_collapse"} <= set(MEASURES.names())
    assert {"modular", "xor_clusters", "mnist1d", "digits"} <= set(TASKS.names())
    assert {"mlp", "cnn1d", "transformer"} <= set(MODELS.names())
    assert {"grokking-perp-adamw", "softmax-collapse", "grokking-nlm-alignment"} <= set(
        CLAIMS.names())


def test_every_entry_is_documented_and_cited():
    for registry in REGISTRIES.values():
        for entry in registry.entries():
            assert entry.summary and "\n" not in entry.summary
            assert entry.cls.__doc__, f"{registry.kind} {entry.name} has no docstring"
            if registry is TECHNIQUES or registry is CLAIMS:
                assert entry.citations(), f"{entry.name} cites no paper"


def test_implementations_of_paper_9():
    impl = implementations(9)
    assert "technique:stablemax" in impl and "technique:perp_grad" in impl
    assert "claim:softmax-collapse" in impl


def test_duplicate_registration_and_bad_summary_are_refused():
    reg = Registry("widget")

    @reg.register("a", summary="one line")
    class A:
        pass

    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", summary="one line")(type("B", (), {}))
    with pytest.raises(ValueError, match="one non-empty line"):
        reg.register("c", summary="two\nlines")
    with pytest.raises(ValueError, match="no catalog paper"):
        reg.register("d", summary="x", papers=(99,))(type("D", (), {}))


def test_wildcard_listing():
    assert TECHNIQUES.names("s*") == sorted(n for n in TECHNIQUES.names() if n.startswith("s"))


def test_search_spaces_are_checked_when_a_component_registers():
    import dataclasses

    reg = Registry("widget")

    @dataclasses.dataclass
    class W:
        rho: float = 0.1
        size: int = 2

    reg.register("ok", summary="x", search_space={"rho": ("log_uniform", 0.01, 0.5),
                                                  "size": ("choice", [1, 2])})(W)
    with pytest.raises(ValueError, match="names 'lr', which is not a parameter; parameters: rho"):
        reg.register("bad", summary="x", search_space={"lr": ("uniform", 0, 1)})(W)
    with pytest.raises(ValueError, match="the kind must be one of uniform"):
        reg.register("bad", summary="x", search_space={"rho": ("normal", 0, 1)})(W)
    with pytest.raises(ValueError, match="0 < lo < hi"):
        reg.register("bad", summary="x", search_space={"rho": ("log_uniform", 0, 1)})(W)
    with pytest.raises(ValueError, match=r"\('choice', \[values\]\)"):
        reg.register("bad", summary="x", search_space={"size": ("choice", [])})(W)
    assert "bad" not in reg


def _modules_after(code: str) -> set[str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; "
         "print(' '.join(m for m in sys.modules if m.startswith('heldout')))"],
        check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_a_plain_loop_import_loads_no_run_store_or_ledger_module():
    upper = ("heldout.store", "heldout.run", "heldout.claims",
             "heldout.experiments", "heldout.report", "heldout.vectorize", "heldout.cli")
    for code in ("import heldout.methods", "import heldout.measures",
                 "from heldout.registry import TECHNIQUES; TECHNIQUES.get('sam')"):
        loaded = _modules_after(code)
        assert "heldout.methods" in loaded or "heldout.measures" in loaded
        assert not [m for m in loaded if m.startswith(upper)], code


def test_each_registry_loads_only_its_own_builtins():
    loaded = _modules_after("from heldout.registry import MODELS; MODELS.get('mlp')")
    assert "heldout.models.mlp" in loaded
    assert not [m for m in loaded if m.startswith(("heldout.claims", "heldout.methods.",
                                                   "heldout.measures."))]


def test_bounds_declared_on_fields_are_checked_when_a_component_is_built():
    from dataclasses import dataclass

    from heldout.core.bounds import Annotated, Ge, Interval
    from heldout.core.technique import Technique

    reg = Registry("widget")
    seen = []

    @reg.register("w", summary="x")
    @dataclass
    class W(Technique):
        rho: Annotated[float, Ge(0)] = 0.05
        rates: Annotated[tuple[float, ...], Interval(0, 1)] = (0.5,)
        decay: Annotated[float, Interval(0, 1, closed="left")] = 0.9

        def __post_init__(self):
            seen.append(self.rho)  # the component's own checks run after the bounds

    assert W(rho=0.0).rho == 0.0 and seen == [0.0]
    for kwargs, message in [({"rho": -1.0}, "rho must be >= 0, got -1.0"),
                            ({"rho": float("nan")}, "rho must be >= 0, got nan"),
                            ({"decay": 1.0}, r"decay must be in \[0, 1\), got 1.0"),
                            ({"rates": (0.5, 2.0)}, r"rates must be in \[0, 1\], got 2.0")]:
        with pytest.raises(ValueError, match=message):
            W(**kwargs)
    with pytest.raises(TypeError, match="rho must be a number, got '0.1'"):
        W(rho="0.1")
    assert seen == [0.0]  # refused before the component's own __post_init__


def test_a_component_file_registers_itself_without_being_listed(tmp_path, monkeypatch):
    """A registry imports every module of its built-in packages: adding a component is its
    own file (plus its test), with no line in the package's __init__."""
    import sys
    import types

    reg = Registry("widget", ("widgets_for_test",))
    package = tmp_path / "widgets_for_test"
    (package / "nested").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nested" / "__init__.py").write_text("")
    (package / "nested" / "gizmo.py").write_text(
        "from registry_for_test import REG\n\n"
        "@REG.register('gizmo', summary='A widget found by the walk.')\n"
        "class Gizmo:\n    '''Found.'''\n")
    monkeypatch.setitem(sys.modules, "registry_for_test", types.SimpleNamespace(REG=reg))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reg.names() == ["gizmo"]
