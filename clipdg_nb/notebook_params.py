"""In the kernel: what papermill injected, checked against the notebook's `parameters` cell.

Papermill only warns about an undeclared parameter (`-p datset iwildcam`) and runs with the default;
`check_injected(globals())`, called by `config.from_namespace`, stops at the first cell, naming it and
the closest declared one. It reads IPython's history `In`: the cell before the current one is
papermill's injected cell, the one before that the notebook's own. Imports nothing from the package.
"""
from __future__ import annotations

import ast
import difflib
from typing import Mapping

PAPERMILL_MARK = "# Parameters"  # the comment papermill's Python translator puts atop the injected cell


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


