"""Two layers, one direction: the library the notebooks import (everything in clipdg_nb but the runner)
never imports the runner (clipdg_nb.pipeline, clipdg_nb.cli); the runner imports the library.

Read with `ast`, so imports inside functions count as much as those at the top of a module; the
notebooks' code cells are held to the same rule."""
from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipdg_nb"
RUNNER = ("clipdg_nb.pipeline", "clipdg_nb.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_runner(module: str) -> bool:
    return any(module == r or module.startswith(r + ".") for r in RUNNER)


def imported_modules(source: str, module: str = "", is_package: bool = False) -> set[str]:
    """Every module an import statement or `importlib.import_module("...")` in `source` names, relative
    imports resolved against `module`; for `from X import y` both X and X.y (y may be a submodule)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if not _in_runner(name):
            yield name, path


def test_the_rule_sees_relative_lazy_and_absolute_imports():
    src = ("import os\n"
           "def f():\n    from ..pipeline.runner import run_experiment\n"
           "def g():\n    from .. import cli\n"
           "import clipdg_nb.pipeline.report\n"
           "from clipdg_nb import pipeline\n")
    found = imported_modules(src, "clipdg_nb.demo.x")
    assert {"clipdg_nb.pipeline.runner", "clipdg_nb.cli", "clipdg_nb.pipeline.report", "clipdg_nb.pipeline"} <= found
    assert not [m for m in imported_modules("from .data import x\nimport json\n", "clipdg_nb.config") if _in_runner(m)]
    assert _in_runner("clipdg_nb.pipeline") and _in_runner("clipdg_nb.cli") and not _in_runner("clipdg_nb.client")


def test_the_library_imports_nothing_from_the_runner():
    names = dict(_library_modules())
    assert {"clipdg_nb.config", "clipdg_nb.data", "clipdg_nb.analysis.tables", "clipdg_nb.soups"} <= set(names)
    offenders = {}
    for name, path in names.items():
        bad = sorted(m for m in imported_modules(path.read_text(), name, path.name == "__init__.py") if _in_runner(m))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"the library imports the runner (move what it needs into the library): {offenders}"


def test_the_notebooks_import_nothing_from_the_runner():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    offenders = {}
    for nb in notebooks:
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            bad = sorted(m for m in imported_modules(source) if _in_runner(m))
            if bad:
                offenders[f"{nb.name} cell {i}"] = bad
    assert not offenders, f"a notebook imports the runner: {offenders}"
