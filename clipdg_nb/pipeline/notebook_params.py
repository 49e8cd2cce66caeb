"""The notebooks' `parameters` cells: generated from the config dataclasses, and checked in the kernel
against what papermill injected.

Generated: `python -m clipdg_nb.pipeline.notebook_params --write` (or the older
`python tests/test_notebook_params.py --write`) rewrites the cells of 01-03 from `config.py` after a
change there; tests/test_notebook_params.py fails while a cell differs. Each line is a typed
assignment whose comment is the field's comment in config.py: `papermill --help-notebook` shows it as
the parameter's help, so list parameters carry in it how to pass a list (`-y`, YAML; `-p` passes text).

Checked: papermill warns about a parameter the notebook does not declare (`-p datset iwildcam`) and
runs on with the default. `check_injected(globals())`, which `config.from_namespace` calls, stops
the notebook at its first cell instead, naming the parameter and the closest declared one. It reads
IPython's input history `In` (no notebook path is needed): the cell just before the current one is
papermill's injected cell (it starts with "# Parameters"), and the one before that the notebook's own
parameters cell.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Mapping

from ..config import FinetuneConfig, ZeroShotConfig

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PAPERMILL_MARK = "# Parameters"  # the comment papermill's Python translator puts atop the injected cell
FORCE = "force: bool = False  # rerun even if a finished run with the same identity exists"
LIST_EXAMPLES = {"wise_alphas": "[0.0, 0.25, 0.5, 0.75]"}  # list fields whose default is empty


def list_hint(name: str, example: str) -> str:
    """How to pass a list with papermill, for a parameter's help: `-p` would pass the text '[...]'."""
    return f'; a list: papermill -y "{name}: {example}"'


# The generated parameters cells: the dataclass's fields (typed, with the comment of their line in
# config.py as help), less `skip`, with the notebook's own parameters before / after them.
GENERATED = {
    "01_zero_shot": dict(cls=ZeroShotConfig, skip=("method",), after=(
        "gallery_size: int = 12  # failures shown in the static gallery", FORCE)),
    "02_few_shot_sweep": dict(cls=FinetuneConfig, skip=("method", "lr"), before=(
        "methods: list = ['finetune']  # methods trained at this point: linear_probe, finetune, flyp, lp_ft, "
        "vision_only, vision_only_probe" + list_hint("methods", "[linear_probe, finetune]"),
        "lrs: list = [0.0001]  # learning rates tried for each trained method (probes run once)"
        + list_hint("lrs", "[1.0e-4, 1.0e-5]")), after=(FORCE,)),
    "03_swa_ablation": dict(cls=FinetuneConfig, after=(
        "gallery_size: int = 8  # examples per category in the static comparison gallery", FORCE)),
}


def field_help(cls) -> dict:
    """name -> the comment ending the field's line in the class body (and its bases')."""
    helps = {}
    for klass in reversed(cls.__mro__[:-1]):
        for line in inspect.getsource(klass).splitlines():
            match = re.match(r"^    (\w+): [^=]+ = .+?  # (.+)$", line)
            if match:
                helps[match[1]] = match[2]
    return helps


def _annotation(type_text: str) -> str:
    """Papermill-readable types: 'str | None' -> '"Optional[str]"' (quoted: never evaluated), tuple -> list."""
    if type_text.endswith(" | None"):
        return '"Optional[' + type_text[:-len(" | None")] + ']"'
    return {"tuple": "list"}.get(type_text, type_text)


def render_parameters(cls, skip=(), before=(), after=()) -> str:
    helps, lines = field_help(cls), list(before)
    for f in fields(cls):
        if f.name in skip:
            continue
        value = f.default if f.default is not MISSING else f.default_factory()
        value = list(value) if isinstance(value, tuple) else value
        help_text = helps[f.name]
        if isinstance(value, list):
            help_text += list_hint(f.name, LIST_EXAMPLES.get(f.name) or "[" + ", ".join(map(str, value)) + "]")
        lines.append(f"{f.name}: {_annotation(str(f.type))} = {value!r}  # {help_text}")
    return "\n".join([*lines, *after])


def write_parameters_cells(notebooks: Path = NOTEBOOKS) -> None:
    import nbformat

    for name, spec in GENERATED.items():
        path = Path(notebooks) / f"{name}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = render_parameters(**spec)
        nbformat.write(nb, str(path))


# -- in the kernel: what papermill injected ----------------------------------------------------------
class UnknownParameterError(ValueError):
    """papermill passed a parameter the notebook does not declare, or a list as text."""


def _assignments(source: str) -> dict | None:
    """name -> annotation text ('' when untyped) of a cell made only of assignments to names; None
    for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    out = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            note = node.annotation
            out[node.target.id] = note.value if isinstance(note, ast.Constant) else ast.unparse(note)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            out.update({t.id: "" for t in node.targets})
        else:
            return None
    return out


def injected(namespace: Mapping) -> tuple[dict, dict] | None:
    """(injected names, declared names -> annotation) when the cell run just before the current one
    is papermill's injected cell following the parameters cell; None otherwise (JupyterLab, a test)."""
    history = namespace.get("In")
    if not isinstance(history, list) or len(history) < 3:
        return None
    given_src, declared_src = history[-2], history[-3]  # In[-1] is the cell running now
    if not (isinstance(given_src, str) and given_src.lstrip().startswith(PAPERMILL_MARK)):
        return None
    given, declared = _assignments(given_src), _assignments(declared_src or "")
    return (given, declared) if given is not None and declared else None


def check_injected(namespace: Mapping) -> None:
    """Stop (UnknownParameterError) when papermill injected a name the parameters cell does not
    declare, with the closest declared name; or a list parameter as text (`-p methods "[...]"`).
    Does nothing outside a papermill execution."""
    found = injected(namespace)
    if found is None:
        return
    given, declared = found
    unknown = [name for name in given if name not in declared]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UnknownParameterError(
            f"unknown parameter {', '.join(hints)}: this notebook declares no such parameter, so papermill's "
            f"value would be ignored and the notebook would run on its defaults; nothing was run. Its parameters: "
            f"{', '.join(declared)} (`papermill --help-notebook <notebook>` shows each with its help).")
    for name in given:
        if declared[name] == "list" and isinstance(namespace.get(name), str):
            value = namespace[name]
            example = value.strip() if value.strip().startswith("[") else f"[{value}]"
            raise UnknownParameterError(
                f"{name}={value!r} is text, not a list: papermill's -p passes text. Pass a list as YAML: "
                f"-y \"{name}: {example.replace(chr(39), '')}\" (or -f params.yaml). Nothing was run.")


if __name__ == "__main__" and "--write" in sys.argv:
    write_parameters_cells()
