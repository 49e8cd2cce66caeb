"""project_root()/resolve(): the same repository root from notebooks/, a papermill cwd or elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipdg_nb import paths
from clipdg_nb.paths import ENV_VAR, project_root, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _fake_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (folder / "parameters").mkdir()
    (folder / "clipdg_nb").mkdir()
    return folder


def test_from_the_notebooks_folder(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")  # where JupyterLab starts the kernel
    assert project_root() == ROOT
    assert resolve("parameters/demo.yaml") == ROOT / "parameters" / "demo.yaml"
    assert resolve("parameters/demo.yaml").is_file()


def test_a_kernel_started_in_notebooks_sees_the_root():
    out = subprocess.run([sys.executable, "-c", "from clipdg_nb.paths import project_root; print(project_root())"],
                         cwd=ROOT / "notebooks", capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip()
    assert Path(out) == ROOT


def test_env_var_wins_from_anywhere(monkeypatch, tmp_path):
    target = tmp_path / "deployed"  # need not look like a checkout
    target.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv(ENV_VAR, str(target))
    assert project_root() == target.resolve()
    assert project_root(start=ROOT / "notebooks") == target.resolve()  # even over a real checkout
    assert resolve("outputs/data") == target.resolve() / "outputs" / "data"


def test_from_a_nested_subfolder(monkeypatch, tmp_path):
    project = _fake_project(tmp_path / "proj")
    nested = project / "notebooks" / "drafts" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert project_root() == project.resolve()
    assert project_root(start=nested) == project.resolve()
    assert resolve("outputs/x.csv") == project.resolve() / "outputs" / "x.csv"
    assert resolve("outputs/x.csv", start=ROOT / "notebooks") == ROOT / "outputs" / "x.csv"


def test_a_folder_with_only_some_markers_is_not_the_root(tmp_path):
    project = _fake_project(tmp_path / "proj")
    inner = project / "sub"
    inner.mkdir()
    (inner / "pyproject.toml").write_text("")  # a nested python project, no parameters/
    assert project_root(start=inner) == project.resolve()


def test_falls_back_to_the_installed_package(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing above tmp_path is a checkout
    installed = Path(paths.__file__).resolve().parents[1]
    assert paths.is_project_root(installed)  # tests run from a checkout
    assert project_root() == installed


def test_falls_back_to_the_current_folder(monkeypatch, tmp_path):
    site = tmp_path / "site-packages" / "clipdg_nb"
    site.mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(site / "paths.py"))  # a wheel install, no checkout
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert project_root() == cwd.resolve()


def test_absolute_paths_are_unchanged(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    absolute = Path("/some/where/data")
    assert resolve(absolute) == absolute
    assert resolve(str(absolute)) == absolute
    assert resolve("~/data") == Path.home() / "data"
