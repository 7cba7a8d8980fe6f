"""scripts/setup.sh: a second run with nothing changed installs nothing and prints nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="runs only inside the checkout's own .venv")
def test_second_setup_run_is_silent():
    first = _setup()  # the suite itself was started by setup.sh, so this is at least the second run
    assert first.returncode == 0, first.stderr
    second = _setup()
    assert second.returncode == 0 and second.stdout == "" and second.stderr == ""


def test_setup_rejects_an_unknown_torch_choice():
    proc = _setup(ADAPTERKIT_TORCH="rocm-nightly")
    assert proc.returncode == 2 and "ADAPTERKIT_TORCH must be auto, cpu or cuda" in proc.stderr
