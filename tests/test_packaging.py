"""environment.yml (conda can't run here) is checked against pyproject.toml, not executed."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins(requirements) -> dict[str, str]:
    return {_name(r): r.strip() for r in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_names = {_name(d.split("=")[0]) for d in conda} - {"python", "pip"}
    pip_pins = _pins(p for p in pip if not p.startswith("-e"))
    wanted = _pins(project["dependencies"])
    dev = _pins(project["optional-dependencies"]["dev"])  # -e .[dev] installs them; some are listed too
    listed = conda_names | set(pip_pins)
    assert set(wanted) <= listed, "dependencies differ between environment.yml and pyproject.toml"
    assert listed - set(wanted) <= set(dev), "environment.yml lists packages pyproject.toml does not name"
    wanted = {**dev, **wanted}
    for name, pin in pip_pins.items():  # exact pins must be the same pins
        assert pin.replace(" ", "") == wanted[name].replace(" ", ""), name
    assert any(p.startswith("-e .") for p in pip), "environment.yml must install the package itself"
    assert "conda-forge" in env["channels"]


def test_console_script_and_package_data():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["clipdg"] == "clipdg_nb.cli:main"
    assert (ROOT / "clipdg_nb" / "data_files" / "iwildcam_labels.csv").exists()
