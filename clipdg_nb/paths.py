"""The repository root, found the same way wherever a kernel starts.

JupyterLab starts a notebook's kernel in the notebook's folder (notebooks/), papermill in whatever
`cwd` it was given, `clipdg` in the shell's folder. Relative paths in parameters (`outputs/data`,
`parameters/demo.yaml`) mean "from the repository root", so they go through `resolve()`.

No imports from the rest of the package: anything may import this module.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

ENV_VAR = "CLIPDG_ROOT"
MARKERS = ("pyproject.toml", "parameters", "clipdg_nb")


def is_project_root(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds pyproject.toml, parameters/ and clipdg_nb/ (the repository's root)."""
    folder = Path(folder)
    return ((folder / "pyproject.toml").is_file() and (folder / "parameters").is_dir()
            and (folder / "clipdg_nb").is_dir())


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root, as an absolute path.

    In order: $CLIPDG_ROOT if set (it need not look like a checkout: a deployment may point it at
    any folder); the first folder, walking up from `start` (default: the current folder), that holds
    pyproject.toml, parameters/ and clipdg_nb/; the folder above the imported package if it holds
    them (an editable install run from elsewhere); else the current folder.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    here = Path(start if start is not None else Path.cwd()).expanduser().resolve()
    for folder in (here, *here.parents):
        if is_project_root(folder):
            return folder
    installed = Path(__file__).resolve().parent.parent
    if is_project_root(installed):
        return installed
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike, start: str | os.PathLike | None = None) -> Path:
    """`path` as an absolute path: unchanged if absolute (after ~ expansion), else from project_root()."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root(start) / path


@contextlib.contextmanager
def rooted_at(root: str | os.PathLike):
    """Within the block, relative parameters resolve from `root` (an experiment's root, which is
    the project root of its runs wherever this process started)."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old
