"""ruff, with the configuration in pyproject.toml, finds nothing in the package, tests or benchmarks."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    beside = Path(sys.executable).with_name("ruff")  # the dev extra installs it into the venv
    found = str(beside) if beside.is_file() else shutil.which("ruff")
    return [found] if found else None


@pytest.mark.skipif(_ruff() is None, reason="ruff is not installed (pip install -e '.[dev]' brings it)")
def test_ruff_finds_nothing():
    out = subprocess.run([*_ruff(), "check", "--no-cache", "clipdg_nb", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
