"""Where files live and how they are written: the repository root, found the same way wherever a
kernel starts; the experiment folder; writable folders; the one atomic writer every file of the
package goes through.

JupyterLab starts a notebook's kernel in the notebook's folder (notebooks/), papermill in whatever
`cwd` it was given, `clipdg` in the shell's folder. Relative paths in parameters (`outputs/data`,
`parameters/demo.yaml`) mean "from the repository root", so they go through `resolve()`.

No imports from the rest of the package: anything may import this module.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

ENV_VAR = "CLIPDG_ROOT"
MANIFEST_ENV = "CLIPDG_SWEEP_MANIFEST"  # where a notebook run by `clipdg run` lists its run folders
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


def experiment_dir(output_dir: str | os.PathLike, experiment: str) -> Path:
    """`<output_dir>/<experiment>`, the one rule for where an experiment's runs live (a relative
    output_dir from the repository root, wherever the kernel started)."""
    return resolve(output_dir) / experiment


# ---------------------------------------------------------------------------------------------
# Atomic writes: a unique temporary name beside the target, fsync, rename
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a unique temporary path beside `target` (`.<name>.<random><suffix>`); on success it is
    renamed onto `target`, on any error removed. Readers never see half a file; two writers never
    share a temporary name. `suffix` is for writers that insist on an extension (papermill: .ipynb)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be read
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class FolderNotWritableError(PermissionError):
    """A folder results or caches must go to cannot be written; the message names the setting."""


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or None: the one rule for a
    writable folder. Writes and removes a temporary file in the nearest existing folder; creates nothing."""
    folder = probe = Path(folder)
    while not probe.exists():
        if probe.parent == probe:
            return f"{folder} has no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".clipdg-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"cannot write in {probe} ({err.strerror or err})"
    return None


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create `folder`, or raise FolderNotWritableError naming `what` (the setting, e.g. 'output_dir')
    and the path: before hours of computation, not after."""
    folder = Path(folder)
    why = unwritable(folder)
    if why is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = f"cannot create it ({type(e).__name__}: {e.strerror or e})"
    if why is not None:
        raise FolderNotWritableError(f"{what}: cannot write to {folder}: {why}. Choose a writable {what}, or fix "
                                     "the folder's permissions; nothing was computed.")
    return folder


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    return write_bytes(target, json.dumps(to_jsonable(obj), indent=2, allow_nan=False).encode() + b"\n")


def read_json(path: str | os.PathLike):
    """Parsed JSON, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def to_jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays, paths and tuples as plain JSON; non-finite floats as None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable((obj.detach().cpu() if hasattr(obj, "detach") else obj).tolist())
    raise TypeError(f"{type(obj).__name__} cannot be stored in JSON: {obj!r}")
