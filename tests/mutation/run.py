#!/usr/bin/env python
"""Mutation testing: does the suite catch plausible bugs?  The one harness for every list here.

Each list (``tests/mutation/lists/<name>.py``) is data: ``MUTANTS``, each one plausible bug written as
an exact text patch (``old`` must occur once in its file), and the tests that should catch it.
For each mutant the repository is copied to a temporary directory, the patch is applied to the
copy (the real files are never touched), and the named test files run against the copy with
``pytest -x``; a failing test kills the mutant.  The ``vectors`` list (``RUNS = "vectors"``)
runs the spec's conformance vectors instead (``scripts/run_vectors.py``) and reports, per rule
id of ``spec/v1/README.md``, whether every misreading of it fails some vector.

Minutes per list: not part of the suite (``tests/test_mutation_lists.py`` checks that every
patch still applies).

Usage:
  python tests/mutation/run.py --list                  # the lists and their sizes
  python tests/mutation/run.py merge hub [--only SUBSTRING]
  python tests/mutation/run.py vectors [--rules REGEX] [-j N] [-v]
  python tests/mutation/run.py                         # every list, one after the other
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
LISTS = HERE / "lists"
ROOT = HERE.parents[1]
PACKAGE = ROOT / "adapterkit"
README = ROOT / "spec" / "v1" / "README.md"
VECTORS = ROOT / "spec" / "v1" / "vectors"
RUNNER = ROOT / "scripts" / "run_vectors.py"
RULE_DEF = re.compile(r"\*\*\[(R[0-9.]+-[0-9]+)\]\*\*")


def names() -> list[str]:
    return sorted(p.stem for p in LISTS.glob("*.py"))


def load_list(name: str) -> ModuleType:
    """The list ``tests/mutation/lists/<name>.py`` as a module (its dataclasses look it up in sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"mutation_{name}", LISTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ pytest lists


def run_mutant(file: str, old: str, new: str, tests: list[str]) -> tuple[bool, str]:
    """Apply one patch to a copy of the repository and run ``tests`` there: (killed, last line)."""
    with tempfile.TemporaryDirectory(prefix="ak-mutant-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "example-out"))
        target = copy / file
        text = target.read_text()
        if text.count(old) != 1:
            return False, f"patch does not apply ({text.count(old)} matches)"
        target.write_text(text.replace(old, new))
        # the tests that a mutation list still applies fail for every mutant (its patched text is gone): not a kill
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not test_mutation_list_still_applies", *tests]
        proc = subprocess.run(command, cwd=copy, capture_output=True, text=True,
                              env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": tmp})
        return proc.returncode != 0, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]


def run_list(module: ModuleType, only: str) -> tuple[int, int]:
    """Run a pytest list's mutants whose name contains ``only``; print a line each; (killed, total)."""
    killed = total = 0
    for name, file, old, new, *rest in module.MUTANTS:
        if only not in name:
            continue
        total += 1
        dead, detail = run_mutant(file, old, new, rest[0] if rest else module.DEFAULT_TESTS)
        killed += dead
        print(f"{'KILLED ' if dead else 'SURVIVED'}  {name:<66} {detail}", flush=True)
    return killed, total


# ------------------------------------------------------------------ the conformance vectors


def rules_in_readme() -> list[str]:
    return list(dict.fromkeys(RULE_DEF.findall(README.read_text(encoding="utf-8"))))


def mutated_text(mutant) -> str:
    """The mutated package file's text.  Raises SystemExit when the patch does not apply or compile."""
    path = PACKAGE / mutant.file
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.rule} '{mutant.name}': its old text occurs {text.count(mutant.old)} times in {mutant.file}")
    text = text.replace(mutant.old, mutant.new)
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise SystemExit(f"mutant {mutant.rule} '{mutant.name}' does not compile: {exc}") from exc
    return text


def failing_vectors(mutant, vectors: Path) -> list[str]:
    """The vectors that fail against a copy of adapterkit with ``mutant`` (or nothing) applied."""
    with tempfile.TemporaryDirectory(prefix="adapterkit-mutant-") as tmp:
        shutil.copytree(PACKAGE, Path(tmp) / "adapterkit", ignore=shutil.ignore_patterns("__pycache__"))
        if mutant is not None:
            (Path(tmp) / "adapterkit" / mutant.file).write_text(mutated_text(mutant), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, str(RUNNER), "-q", str(vectors)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=600)
    failed = proc.stdout.split()
    if proc.returncode != 0 and not failed:
        failed = [f"(runner crashed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})"]
    return failed


def run_vectors(module: ModuleType, rules_re: str, jobs: int, verbose: bool, vectors: Path) -> tuple[int, int, bool]:
    """Run the vector mutants of the rules matching ``rules_re``; print the table by rule;
    (killed, total, every rule pinned)."""
    rules = rules_in_readme()
    mutants = [m for m in module.MUTANTS if re.match(rules_re, m.rule)]
    unknown = sorted({m.rule for m in module.MUTANTS} - set(rules))
    if unknown:
        raise SystemExit(f"mutants name rule ids the README does not define: {unknown}")
    for m in mutants:  # every patch applies and compiles, before anything runs
        mutated_text(m)
    start = time.monotonic()
    baseline = failing_vectors(None, vectors)
    if baseline:
        raise SystemExit(f"the unmutated copy already fails: {baseline}")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda m: failing_vectors(m, vectors), mutants))
    by_rule: dict[str, list] = {r: [] for r in rules if re.match(rules_re, r)}
    for m, failed in zip(mutants, results):
        by_rule[m.rule].append((m, failed))
    print(f"{'rule':9} {'mutants':>7} {'killed':>6}  surviving mutants / killing vectors")
    for rule, rows in by_rule.items():
        killed = sum(1 for _, f in rows if f)
        notes = [f"SURVIVES: {m.name}" for m, f in rows if not f] or ([] if rows else ["NO MUTANT"])
        print(f"{rule:9} {len(rows):7} {killed:6}  {'; '.join(notes)}")
        if verbose:
            for m, f in rows:
                print(f"{'':26}{m.name}: {', '.join(f[:3])}{' ...' if len(f) > 3 else ''}")
    pinned = sum(1 for rows in by_rule.values() if rows and all(f for _, f in rows))
    killed = sum(1 for f in results if f)
    print(f"rules pinned {pinned} / {len(by_rule)} ({time.monotonic() - start:.0f} s, {jobs} jobs)")
    return killed, len(mutants), pinned == len(by_rule)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lists", nargs="*", help=f"lists to run (default: all): {', '.join(names())}")
    parser.add_argument("--list", action="store_true", help="print the lists and their sizes, run nothing")
    parser.add_argument("--only", default="", help="pytest lists: only mutants whose name contains this")
    parser.add_argument("--rules", default="", help="vectors: only rules whose id matches this regular expression (re.match)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="vectors: mutants run at once")
    parser.add_argument("-v", "--verbose", action="store_true", help="vectors: the vectors that kill each mutant")
    parser.add_argument("--vectors", type=Path, default=VECTORS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.lists) - set(names()))
    if unknown:
        parser.error(f"no such list: {', '.join(unknown)} (lists: {', '.join(names())})")
    ok = True
    scores = []
    for name in args.lists or names():
        module = load_list(name)
        if args.list:
            print(f"{name:14} {len(module.MUTANTS):4}  {(module.__doc__ or '').splitlines()[0]}")
            continue
        print(f"== {name}: {(module.__doc__ or '').splitlines()[0]}", flush=True)
        if getattr(module, "RUNS", "pytest") == "vectors":
            killed, total, pinned = run_vectors(module, args.rules, args.jobs, args.verbose, args.vectors)
            ok &= pinned
        else:
            killed, total = run_list(module, args.only)
        print(f"mutants killed: {killed} / {total}", flush=True)
        scores.append((name, killed, total))
        ok &= killed == total
    if len(scores) > 1:
        print("\n".join(f"{n:14} {k:4} / {t}" for n, k, t in scores))
        print(f"all lists: {sum(k for _, k, _ in scores)} / {sum(t for _, _, t in scores)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
