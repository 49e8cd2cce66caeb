"""Inside a notebook's kernel: what papermill injected, checked against the `parameters` cell, and
how training shows its progress there.

Papermill only warns about an undeclared parameter (`-p datset iwildcam`) and runs with the default;
`check_injected(globals())`, called by `config.from_namespace`, stops at the first cell, naming it and
the closest declared one. It reads IPython's history `In`: the cell before the current one is
papermill's injected cell, the one before that the notebook's own.

Progress: live bars in JupyterLab or a terminal, one line per epoch under papermill (whose
`tqdm.auto` widgets nobody sees and which leave stale widget state in the executed notebook),
nothing when asked; $CLIPDG_PROGRESS (bars | text | off) overrides.
"""
from __future__ import annotations

import ast
import difflib
import os
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


# ---------------------------------------------------------------------------------------------
# Training progress
# ---------------------------------------------------------------------------------------------
ENV_VAR = "CLIPDG_PROGRESS"
MODES = ("bars", "text", "off")


def under_papermill() -> bool:
    """True in a kernel that papermill (or `clipdg run`) executes, as far as the kernel can tell."""
    from .paths import MANIFEST_ENV

    if os.environ.get(MANIFEST_ENV):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    history = (getattr(shell, "user_ns", None) or {}).get("In") or []
    return any(isinstance(src, str) and src.lstrip().startswith(PAPERMILL_MARK) for src in history)


def progress_mode(progress: bool | str = True) -> str:
    """'bars' (tqdm.auto: widgets in JupyterLab, text bars in a terminal), 'text' (a line per epoch)
    or 'off'. `progress` may name a mode; True means: $CLIPDG_PROGRESS, else text under papermill,
    else bars."""
    if progress is False or progress is None:
        return "off"
    if isinstance(progress, str):
        if progress not in MODES:
            raise ValueError(f"progress={progress!r}; choose one of {list(MODES)} or True / False")
        return progress
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in MODES:
        return env
    return "text" if under_papermill() else "bars"


class EpochProgress:
    """Per-epoch progress of one `fit`: an epoch bar (and a step bar that vanishes) in 'bars' mode,
    one printed line per epoch in 'text' mode."""

    def __init__(self, mode: str, epochs: int, start_epoch: int = 0, what: str = "training"):
        self.mode, self.epochs = mode, epochs
        self.bar = None
        if mode == "bars":
            from tqdm.auto import tqdm
            self._tqdm = tqdm
            self.bar = tqdm(total=epochs, initial=start_epoch, desc=what, unit="epoch")
        elif mode == "text":
            resumed = f", resumed after epoch {start_epoch}" if start_epoch else ""
            print(f"{what}: {epochs} epochs{resumed}", flush=True)

    def steps(self, loader, epoch: int):
        """The epoch's batches, wrapped in a step bar that disappears when done ('bars' mode only)."""
        if self.mode != "bars":
            return loader
        return self._tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, unit="batch")

    def end_epoch(self, epoch: int, loss: float, name: str, score: float, best: float, best_epoch: int,
                  seconds: float) -> None:
        if self.mode == "bars":
            self.bar.set_postfix({"loss": f"{loss:.3f}", name: f"{score:.4f}",
                                  "best": f"{best:.4f} (epoch {best_epoch})"})
            self.bar.update(1)
        elif self.mode == "text":
            print(f"epoch {epoch + 1}/{self.epochs}: train loss {loss:.4f}, {name} {score:.4f} "
                  f"(best {best:.4f} at epoch {best_epoch}), {seconds:.1f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
