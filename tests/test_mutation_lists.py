"""The mutation scripts (minutes each, not part of the suite) must still apply: every mutant's
patch must match its file exactly once and name test files that exist, or a script would
report mutants unapplied and its score would silently shrink."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"mutate_cli": 30, "mutate_checkpoint": 20, "mutate_merge": 40, "mutate_combine": 30, "mutate_resize": 25, "mutate_inject": 20,
           "mutate_extract": 40, "mutate_hub": 35, "mutate_digest": 30, "mutate_fault": 19, "mutate_inspect": 35, "mutate_fuzz": 25,
           "mutate_recipe": 45, "mutate_fault2": 10, "mutate_merge_multi": 25, "mutate_features": 15, "mutate_independent": 85, "mutate_independent2": 20}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_mutation_list_still_applies(script: str) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(script, ROOT / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(module.MUTANTS) >= SCRIPTS[script]
    for name, file, old, _new, *tests in module.MUTANTS:
        assert (ROOT / file).read_text(encoding="utf-8").count(old) == 1, name
        for test in tests[0] if tests else []:
            assert (ROOT / test.split("::")[0]).is_file(), (name, test)
