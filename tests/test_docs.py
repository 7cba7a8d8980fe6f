"""The docs a user reads cannot drift: the generated CLI reference is current, every relative link
resolves, and the README's two set-up commands are the ones the scripts and CI run.

* ``docs/cli.md`` equals what ``scripts/make_docs.py`` renders from the click commands (run
  ``python scripts/make_docs.py`` after changing a command), and rendering it imports no torch;
* every relative link and image in ``README.md`` and ``docs/*.md`` names a file that exists;
* ``.ci/run`` runs exactly the README's test command, and the README's example command exists;
* every ``adapterkit.NAME`` in ``docs/python.md``'s examples is a public name of the package.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_docs = _make_docs()


def test_cli_reference_is_current():
    diff = make_docs.stale()
    assert diff == [], "docs/cli.md is stale; run `python scripts/make_docs.py`:\n" + "".join(diff[:80])


def test_cli_reference_documents_every_command_and_option():
    import click

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    main = make_docs._main()
    for name, command in main.commands.items():
        assert f"### `adapterkit {name}`" in text
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert all(f"`{opt}" in text or f", {opt}" in text or f"/ {opt}" in text for opt in param.opts), (name, param.opts)


def test_check_mode_fails_on_a_stale_page_and_writing_repairs_it(tmp_path, monkeypatch, capsys):
    page = tmp_path / "cli.md"
    page.write_text("# Command-line reference\n\nedited by hand\n", encoding="utf-8")
    monkeypatch.setattr(make_docs, "CLI_MD", page)
    assert make_docs.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "-edited by hand" in out and "+### `adapterkit merge`" in out
    assert make_docs.main([]) == 0 and make_docs.main(["--check"]) == 0
    assert page.read_text(encoding="utf-8") == make_docs.render()


def test_rendering_the_reference_imports_no_torch():
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('make_docs', 'scripts/make_docs.py')\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert m.render().startswith('# Command-line reference')\n"
            "print(sorted(n for n in sys.modules if n == 'torch' or n.startswith('torch.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "cli.md", "python.md", "format.md", "benchmarks.md", "development.md", "guide.md"} <= names


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces to
    dashes, a repeated heading suffixed -1, -2, ..."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    links = _links(page)
    assert links or page.name == "architecture.md", f"{page}: no links found (is the pattern right?)"
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # a URL (https:, mailto:)
        path, _, anchor = target.partition("#")
        path = path.split("?", 1)[0]
        file = page.parent / path if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: links to missing files or headings: {broken}"


def test_the_link_pattern_sees_links_and_skips_code(tmp_path):
    sample = "[a](x.md) ![img](y.png) `[no](z.md)`\n```\n[no](w.md)\n```\n[b](docs/v.md#part)\n"
    text = _CODE.sub("", _FENCE.sub("", sample))
    assert _LINK.findall(text) == ["x.md", "y.png", "docs/v.md#part"]
    page = tmp_path / "p.md"
    page.write_text("# The Hub: push, pull\n## `adapterkit merge`\n## bench_io.py\n## Set-up\n## Set-up\n```\n# not a heading\n```\n")
    assert _anchors(page) == {"the-hub-push-pull", "adapterkit-merge", "bench_iopy", "set-up", "set-up-1"}


def _commands(text: str) -> list[str]:
    """Every command line inside the fenced bash blocks of ``text``."""
    blocks = re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, re.S | re.M)
    return [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "bash scripts/test.sh" in readme and "bash scripts/example.sh" in readme
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["bash scripts/test.sh"]
    assert (ROOT / "scripts" / "test.sh").is_file() and (ROOT / "scripts" / "example.sh").is_file()


def _python_names() -> set[str]:
    text = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", text, re.S | re.M))
    return set(re.findall(r"\badapterkit\.([A-Za-z_]\w*)", code))


def test_python_page_has_examples():
    assert {"load", "save", "merge", "attach", "merge_attached", "combine"} <= _python_names()


@pytest.mark.skipif("merge_attached" not in __import__("adapterkit").__all__,
                    reason="the public renames of issue 18 point 3 (adapterkit.merge_attached, ...) have not landed here")
def test_python_page_names_exist():
    import adapterkit

    submodules = {"errors", "linalg", "testing", "differences", "kinds", "ops", "io", "inject", "inspect", "hub", "checkpoint"}
    missing = sorted(n for n in _python_names() - submodules if not hasattr(adapterkit, n))
    assert missing == [], f"docs/python.md uses names adapterkit does not export: {missing}"
