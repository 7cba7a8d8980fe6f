"""scripts/bench_all.py: every benchmark is in its table, and figures reach docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture()
def bench_all(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench_all_under_test", SCRIPTS / "bench_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_runs_in_bench_all_and_reports_figures(bench_all) -> None:
    scripts = {p.name for p in SCRIPTS.glob("bench_*.py")} - {"bench_all.py"}
    assert scripts == set(bench_all.QUICK)
    for name in scripts:
        assert "from bench_all import record" in (SCRIPTS / name).read_text(), name
        assert "record(" in (SCRIPTS / name).read_text().split("from bench_all import record", 1)[1], name


def test_record_is_silent_alone_and_appends_a_line_under_bench_all(bench_all, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(bench_all.ENV, raising=False)
    bench_all.record("x", 1.0, 2.0)  # no file named: nothing happens
    out = tmp_path / "rows.jsonl"
    monkeypatch.setenv(bench_all.ENV, str(out))
    monkeypatch.setattr(sys, "argv", ["bench_demo.py"])
    bench_all.record("load with check", 3.0, 2.0, anchor_label="load_file", target="<= 1.5x", unit="ms")
    bench_all.record("diff", 0.5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["figure"] for r in rows] == ["load with check", "diff"]
    assert rows[0] | {} == {"script": "bench_demo.py", "figure": "load with check", "ours": 3.0, "anchor": 2.0,
                            "anchor_label": "load_file", "target": "<= 1.5x", "unit": "ms", "better": "lower"}
    text = bench_all.table(rows, {"bench_x.py": "timed out after 5 s"}, "a machine", "2026-12-07")
    assert "| `bench_demo.py` | load with check | 3 ms | 2 ms (load_file) | 1.5× | <= 1.5x |" in text
    assert "| `bench_demo.py` | diff | 0.5 s | - | - | - |" in text
    assert "`bench_x.py` | did not finish: timed out after 5 s" in text and "a machine" in text


def test_the_table_replaces_only_its_own_block(bench_all, tmp_path, monkeypatch) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose stays\n")
    monkeypatch.setattr(bench_all, "DOC", doc)
    bench_all.write_doc("first cpu", "cpu")
    bench_all.write_doc("first cuda", "cuda")
    bench_all.write_doc("second cpu", "cpu")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nprose stays\n")
    assert "second cpu" in text and "first cpu" not in text and "first cuda" in text
    assert text.count("<!-- bench_all:cpu:begin -->") == text.count("<!-- bench_all:cuda:end -->") == 1
