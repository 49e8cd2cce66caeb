"""Experiment files (`parameters/*.yaml`): stages of notebooks, each a grid of points.

An experiment names its stages; each stage is a notebook, a grid (lists expanded as a product) and
fixed parameters, over shared defaults. Every grid point becomes one papermill execution into
`outputs/notebooks/<experiment>/<stage>/<point>.ipynb`. Errors name the file and the key.
"""
from __future__ import annotations

import decimal
import functools
import glob
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..paths import to_jsonable

TOP_KEYS = ("experiment", "description", "defaults", "stages")
STAGE_KEYS = ("name", "notebook", "grid", "params", "after", "description")
FORCE_PARAM = "force"  # a notebook declaring it gets force=True under --force (not part of the marker)


class ExperimentError(ValueError):
    """An experiment file is malformed; the message names the file and the key."""


@dataclass
class Point:
    """One notebook execution: where it comes from, what it is given, where it goes."""
    experiment: str
    stage: str
    name: str
    notebook: Path  # absolute
    parameters: dict
    output: Path  # executed notebook (absolute)
    root: Path  # papermill's cwd
    force_param: bool = False  # the notebook declares `force`

    @property
    def done_path(self) -> Path:
        return self.output.with_suffix(".done.json")

    @property
    def failed_path(self) -> Path:
        return self.output.with_suffix(".failed.json")

    @property
    def failed_notebook_path(self) -> Path:
        """The executed notebook of the last failed attempt, kept for reading (`<point>.ipynb` holds
        only a successful execution)."""
        return self.output.with_suffix(".failed.ipynb")

    @property
    def lock_path(self) -> Path:
        """Held by the one process executing the point."""
        return self.output.with_suffix(".lock")

    def leftovers(self) -> list[Path]:
        """Temporary files of attempts that were killed (`.<point>.ipynb.*`, `.<point>.done.json.*`,
        ...): safe to remove by whoever holds the point's lock."""
        folder, stem = self.output.parent, glob.escape(self.name)
        return [p for kind in ("ipynb", "done.json", "failed.json", "failed.ipynb", "runs.jsonl")
                for p in folder.glob(f".{stem}.{kind}.*")]

    def to_json(self) -> dict:
        return to_jsonable(vars(self))

    @classmethod
    def from_json(cls, d: Mapping) -> "Point":
        return cls(**{k: Path(v) if k in ("notebook", "output", "root") else v for k, v in d.items()})


@dataclass
class Stage:
    name: str
    notebook: Path
    grid: dict
    params: dict
    points: list = field(default_factory=list)
    # the stages whose points must all have ended before this one's start: by default every stage
    # above it in the file; `after: [...]` in the file names fewer, so that independent stages
    # (ones that train their own runs) share the workers instead of waiting for each other
    after: tuple = ()


@dataclass
class Experiment:
    name: str
    path: Path
    root: Path
    defaults: dict
    stages: list

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ExperimentError(f"{self.path}: no stage named {name!r}; stages are {[s.name for s in self.stages]}")


def expand_grid(grid: Mapping[str, Iterable] | None) -> list[dict]:
    """The product of the grid's lists, in file order: {a: [1, 2], b: [x]} -> [{a:1,b:x}, {a:2,b:x}]."""
    grid = dict(grid or {})
    return [dict(zip(grid, values)) for values in itertools.product(*map(list, grid.values()))]


def _token(value) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_token(v) for v in value)
    if isinstance(value, float):
        value = f"{value:g}"
    return re.sub(r"[^A-Za-z0-9.+]+", "-", str(value)).strip("-") or "none"


def point_name(values: Mapping[str, Any]) -> str:
    """File-safe name of a grid point from its grid values, e.g. ``dataset-fmow_fraction-0.1_seed-0``."""
    if not values:
        return "default"
    return "_".join(f"{_token(k)}-{_token(v)}" for k, v in values.items())


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict]:
    """The parameters a notebook declares (papermill's ``inspect_notebook``): name -> {default, help, ...}."""
    path = Path(notebook).resolve()
    return _declared(str(path), path.stat().st_mtime_ns)


@functools.cache
def _declared(path: str, mtime_ns: int) -> dict:  # once per version of the file
    import papermill

    return dict(papermill.inspect_notebook(path))


_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _check_values(fail, key, value) -> None:
    """Catch numbers YAML 1.1 reads as text: `1e-3` is the string '1e-3' (write 1.0e-3)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_values(fail, f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_values(fail, f"{key}[{i}]", v)
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        hint = format(decimal.Decimal(value.strip()), "f")
        fail(key, f"{value!r} is text, not a number: YAML reads an exponent without a dot and a "
             f"sign as a string; write {hint} (unquoted)")


def _check_mapping(fail, key, value) -> dict:
    if value is not None and not isinstance(value, Mapping):
        fail(key, f"must be a mapping (name: value), got {type(value).__name__}")
    return dict(value) if isinstance(value, Mapping) else {}


_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _check_after(fail, key, raw: Mapping, earlier: list[str]) -> tuple:
    """A stage's `after`: names of stages above it (a name alone is a list of one; [] starts it
    with the first stage). Absent: every stage above it. Only earlier stages, so the file's order
    is always one that satisfies every `after`, and no two stages wait for each other."""
    if "after" not in raw:
        return tuple(earlier)
    value = raw["after"]
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fail(key, f"must be a list of names of stages above this one ([] to start with the first stage), "
             f"got {raw['after']!r}")
        return tuple(earlier)
    for name in value:
        if name not in earlier:
            fail(key, f"{name!r} is not a stage above this one; it can run after {earlier or 'no stage (it is the first)'}")
    return tuple(name for name in earlier if name in value)  # in file order, each once


def load_experiment(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Experiment:
    """Read and validate an experiment YAML; expand every stage's grid into points.

    Relative paths (notebooks, outputs/notebooks/) resolve against ``root`` (default: the current
    folder, i.e. the repository root), which is also each notebook's working folder. Every structural
    problem of the file is collected and raised together (`ExperimentError`, one line each, naming
    the file and the key): unknown keys, missing notebooks, parameters a notebook does not declare.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist; see parameters/*.yaml for examples")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ExperimentError(f"{path}: must be a mapping with keys {list(TOP_KEYS)}")
    problems: list[str] = []  # every one, so that the user fixes them all in one go

    def fail(key: str, message: str) -> None:
        if (line := f"{path}: {key}: {message}") not in problems:
            problems.append(line)

    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        fail(unknown[0], f"unknown key(s) {unknown}; allowed: {list(TOP_KEYS)}")
    name = data.get("experiment")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        fail("experiment", f"must be a name of letters, digits, '-' or '_' (it names folders), got {name!r}")
        name = "experiment"  # a stand-in, so that the stages are checked too
    defaults = _check_mapping(fail, "defaults", data.get("defaults"))
    _check_values(fail, "defaults", defaults)
    if "experiment" in defaults:
        fail("defaults.experiment", "set the experiment name with the top-level `experiment:` key")
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        fail("stages", "must be a non-empty list of stages (name, notebook, grid, params)")
        stages_raw = []
    root = Path(root if root is not None else Path.cwd()).resolve()
    out_root = (root / "outputs/notebooks").resolve()

    stages, seen, used_defaults, declared_anywhere = [], set(), set(), True
    earlier: list[str] = []  # the names of the stages above the current one
    for i, raw in enumerate(stages_raw):
        where = f"stages[{i}]"
        if not isinstance(raw, Mapping):
            fail(where, "must be a mapping with keys name, notebook, grid, params")
            declared_anywhere = False
            continue
        unknown = sorted(set(raw) - set(STAGE_KEYS))
        if unknown:
            fail(f"{where}.{unknown[0]}", f"unknown stage key(s) {unknown}; allowed: {list(STAGE_KEYS)}")
        sname = raw.get("name")
        if not isinstance(sname, str) or not _NAME.fullmatch(sname):
            fail(f"{where}.name", f"must be a name of letters, digits, '-' or '_', got {sname!r}")
            sname = f"stage{i}"
        elif sname in seen:
            fail(f"{where}.name", f"stage name {sname!r} is used twice")
        seen.add(sname)
        where = f"stages[{i}] ({sname})"
        after = _check_after(fail, f"{where}.after", raw, earlier)
        earlier.append(sname)
        grid = _check_mapping(fail, f"{where}.grid", raw.get("grid"))
        params = _check_mapping(fail, f"{where}.params", raw.get("params"))
        for key, values in list(grid.items()):
            if not isinstance(values, list) or not values:
                fail(f"{where}.grid.{key}", f"must be a non-empty list, got {values!r}; "
                     "put a single fixed value under params")
                del grid[key]
        _check_values(fail, f"{where}.grid", grid)
        _check_values(fail, f"{where}.params", params)
        both = sorted(set(grid) & set(params))
        if both:
            fail(f"{where}.params.{both[0]}", "is set both in grid and params; keep one")
        nb_rel = raw.get("notebook")
        notebook = (root / nb_rel).resolve() if isinstance(nb_rel, str) else None
        if notebook is None or not notebook.is_file():
            fail(f"{where}.notebook", f"{nb_rel} does not exist (looked in {root})" if notebook else
                 "must be the path of a .ipynb (relative to the repository root)")
            declared_anywhere = False  # which defaults are used is unknown: not checked
            continue
        declared = notebook_parameters(notebook)
        for section, mapping in (("grid", grid), ("params", params)):
            for key in mapping:
                if key == "experiment":
                    fail(f"{where}.{section}.experiment", "set by the top-level `experiment:` key")
                elif key not in declared:
                    fail(f"{where}.{section}.{key}", f"{nb_rel} does not declare a parameter {key!r}; "
                         f"it declares {sorted(declared)}")
        base = {k: v for k, v in defaults.items() if k in declared}
        used_defaults.update(base)
        if "experiment" in declared:
            base["experiment"] = name
        stage = Stage(sname, notebook, grid, params, after=after)
        names = set()
        for values in expand_grid(grid):
            pname = point_name(values)
            if pname in names:
                fail(f"{where}.grid", f"two points share the file name {pname!r}; make the values distinct")
            names.add(pname)
            stage.points.append(Point(name, sname, pname, notebook, {**base, **params, **values},
                                      out_root / name / sname / f"{pname}.ipynb", root,
                                      force_param=FORCE_PARAM in declared))
        stages.append(stage)
    unused = sorted(set(defaults) - used_defaults - {"experiment"})
    if unused and declared_anywhere and stages:
        fail(f"defaults.{unused[0]}", f"no stage's notebook declares {unused}; check the spelling")
    if len(problems) == 1:
        raise ExperimentError(problems[0])
    if problems:
        raise ExperimentError(f"{len(problems)} problems in {path}:\n  " + "\n  ".join(problems))
    return Experiment(name, path, root, defaults, stages)
