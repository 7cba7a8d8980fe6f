"""The mutation lists (tests/mutation/lists/*.py, minutes each, not part of the suite) must still apply:
every mutant's patch must match its file exactly once and name test files that exist, or a
run would report mutants unapplied and its score would silently shrink."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "tests" / "mutation"
# the least each list holds: a list that lost mutants in a refactoring fails here
SIZES = {"cli": 30, "checkpoint": 20, "merge": 40, "combine": 30, "resize": 25, "inject": 20,
         "extract": 40, "hub": 35, "digest": 30, "fault": 19, "inspect": 35, "fuzz": 25,
         "recipe": 45, "fault2": 10, "merge_multi": 25, "features": 15, "independent": 85, "independent2": 20, "independent3": 40,
         "threads": 11, "torchfree": 30, "verified": 11, "quant": 38, "quantgrid": 33, "quantspeed": 46, "kinds21": 28}


def _harness():
    spec = importlib.util.spec_from_file_location("mutation_run", LISTS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _harness()


def test_every_list_is_counted() -> None:
    assert set(run.names()) == set(SIZES) | {"vectors"}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_mutation_list_still_applies(name: str) -> None:
    module = run.load_list(name)
    assert len(module.MUTANTS) >= SIZES[name]
    assert len({m[0] for m in module.MUTANTS}) == len(module.MUTANTS), "mutant names are unique"
    for mutant_name, file, old, new, *tests in module.MUTANTS:
        assert old != new, mutant_name
        assert (ROOT / file).read_text(encoding="utf-8").count(old) == 1, mutant_name
        for test in tests[0] if tests else module.DEFAULT_TESTS:
            assert (ROOT / test.split("::")[0]).is_file(), (mutant_name, test)


def test_vector_list_follows_the_code_and_the_text() -> None:
    """The vectors list needs a mutant for every rule id of the spec's README, and every mutant's
    patch must still apply to exactly one place and compile.  When this fails after a
    refactoring, update the mutant's ``old`` text (or its rule) in tests/mutation/lists/vectors.py."""
    module = run.load_list("vectors")
    rules = run.rules_in_readme()
    assert len(rules) == len(set(rules)) >= 60
    assert {m.rule for m in module.MUTANTS} == set(rules)
    for m in module.MUTANTS:
        run.mutated_text(m)  # raises SystemExit when the patch no longer applies or compiles
