"""The environment installs the same tomorrow: requirements.lock pins every package `make lock`
resolved, so every dependency pyproject.toml names; environment.yml (conda can't run here: checked,
not executed) names the same packages at the lock's versions; every third-party import is declared."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "open_clip": "open-clip-torch",
                 "IPython": "ipython", "ipykernel_launcher": "ipykernel"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> list[str]:
    project = _project()
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [l.split("==") for l in lines if l.strip() and not l.startswith("#")]
    assert all(len(p) == 2 for p in pins), "requirements.lock holds exact pins (name==version) only"
    return {_name(name): version.strip() for name, version in pins}


def test_the_lock_pins_every_dependency_and_agrees_with_pyproject():
    lock = _lock()
    assert "clipdg-nb" not in lock, "the lock pins the dependencies, not the package itself"
    for requirement in _declared():
        name = _name(requirement)
        assert name in lock, f"{name} is a dependency in pyproject.toml but not pinned in requirements.lock: run make lock"
        if "==" in requirement:
            assert requirement.split("==")[1].strip() == lock[name], f"{name}: pyproject.toml and the lock differ"


def test_environment_yml_names_the_lock_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = dict(p.split("==") for p in pip if not p.startswith("-"))
    assert {_name(n) for n in pins} == {_name(r) for r in _declared()}, \
        "environment.yml and pyproject.toml name different packages"
    lock = _lock()
    assert {_name(n): v for n, v in pins.items()} == {_name(n): lock[_name(n)] for n in pins}, \
        "environment.yml's versions are not the lock's"
    assert "-c requirements.lock" in pip and any(p.startswith("-e .") for p in pip)


def _imports(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_every_imported_package_is_declared():
    """Package, tests, benchmarks, tools and notebooks: each third-party import names a declared distribution."""
    found = set()
    for folder in ("clipdg_nb", "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= _imports(path.read_text())
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in nbformat.read(str(path), as_version=4).cells:
            if cell.cell_type == "code":
                found |= _imports("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!"))))
    local = {p.stem for folder in ("tests", "benchmarks", "tools") for p in (ROOT / folder).glob("*.py")}
    third_party = found - set(sys.stdlib_module_names) - local - {"clipdg_nb"}
    declared = {_name(r) for r in _declared()}
    missing = sorted(m for m in third_party if _name(DISTRIBUTIONS.get(m, m)) not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_console_script_and_package_data():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["clipdg"] == "clipdg_nb.cli:main"
    assert (ROOT / "clipdg_nb" / "data_files" / "iwildcam_labels.csv").exists()
