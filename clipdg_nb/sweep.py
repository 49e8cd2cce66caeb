"""Papermill over a parameter grid: `clipdg run parameters/X.yaml`.

An experiment file names its stages; each stage is a notebook, a grid (lists expanded as a
product) and fixed parameters. Every grid point is one papermill execution into
``outputs/notebooks/<experiment>/<stage>/<point>.ipynb``. The sweep is

* resumable: after a point succeeds, ``<point>.done.json`` (parameters + the run folders the
  notebook reported through :func:`note_runs`) is written atomically; a rerun skips points
  whose marker holds the same parameters and whose run records still exist;
* fault tolerant: a failing point leaves ``<point>.failed.json`` (cell, error) and the rest go on;
* parallel: ``jobs`` points at once in worker processes, one point per GPU when GPUs are visible.

``--slurm`` writes a job-array script per stage instead of running anything.
"""
from __future__ import annotations

import datetime as _dt
import decimal
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .results import _atomic_write, run_is_done, to_jsonable

TOP_KEYS = ("experiment", "description", "defaults", "stages")
STAGE_KEYS = ("name", "notebook", "grid", "params", "description")
MANIFEST_ENV = "CLIPDG_SWEEP_MANIFEST"  # where a notebook run by the sweep lists its run folders
FORCE_PARAM = "force"  # a notebook declaring it gets force=True under --force (not part of the marker)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ExperimentError(ValueError):
    """An experiment file is malformed; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------
# The notebook side: run folders reported back to the sweep
# ---------------------------------------------------------------------------------------------

def note_runs(*runs) -> list[str]:
    """Tell the sweep which run folders this notebook produced (records, or folders).

    Under the sweep, appends them to the manifest named by ``$CLIPDG_SWEEP_MANIFEST``; under plain
    papermill or JupyterLab it does nothing but return the folders.
    """
    dirs = []
    for run in runs:
        if isinstance(run, Mapping):  # a run record: {output_dir}/{experiment}/{run_id}, as api.run_dir
            params = run.get("params") or {}
            experiment = run.get("experiment", params.get("experiment", ""))
            dirs.append(str(Path(params.get("output_dir", "outputs/runs")) / experiment / run["run_id"]))
        else:
            dirs.append(str(run))
    manifest = os.environ.get(MANIFEST_ENV)
    if manifest:
        with open(manifest, "a", encoding="utf-8") as fh:
            for d in dirs:
                fh.write(json.dumps(d) + "\n")
    return dirs


# ---------------------------------------------------------------------------------------------
# Experiment files
# ---------------------------------------------------------------------------------------------

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
    def manifest_path(self) -> Path:
        return self.output.with_suffix(".runs.jsonl")

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "stage": self.stage, "name": self.name,
                "notebook": str(self.notebook), "parameters": to_jsonable(self.parameters),
                "output": str(self.output), "root": str(self.root), "force_param": self.force_param}

    @classmethod
    def from_json(cls, d: Mapping) -> "Point":
        return cls(d["experiment"], d["stage"], d["name"], Path(d["notebook"]), dict(d["parameters"]),
                   Path(d["output"]), Path(d["root"]), bool(d.get("force_param", False)))


@dataclass
class Stage:
    name: str
    notebook: Path
    grid: dict
    params: dict
    points: list = field(default_factory=list)


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
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


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


_DECLARED_CACHE: dict = {}


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict]:
    """The parameters a notebook declares (papermill's ``inspect_notebook``): name -> {default, help, ...}."""
    import papermill

    path = Path(notebook)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _DECLARED_CACHE:
        _DECLARED_CACHE[key] = dict(papermill.inspect_notebook(str(path)))
    return _DECLARED_CACHE[key]


def _fail(path, key: str, message: str):
    raise ExperimentError(f"{path}: {key}: {message}")


_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _check_values(path, key, value) -> None:
    """Catch numbers YAML 1.1 reads as text: `1e-3` is the string '1e-3' (write 1.0e-3)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_values(path, f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_values(path, f"{key}[{i}]", v)
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        hint = format(decimal.Decimal(value.strip()), "f")
        _fail(path, key, f"{value!r} is text, not a number: YAML reads an exponent without a dot and a "
              f"sign as a string; write {hint} (unquoted)")


def _check_mapping(path, key, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(path, key, f"must be a mapping (name: value), got {type(value).__name__}")
    return dict(value)


def load_experiment(path: str | os.PathLike, root: str | os.PathLike | None = None,
                    output_dir: str | os.PathLike = "outputs/notebooks") -> Experiment:
    """Read and validate an experiment YAML; expand every stage's grid into points.

    Relative paths (notebooks, outputs) resolve against ``root`` (default: the current folder,
    i.e. the repository root), which is also each notebook's working folder. Errors name the file
    and the key: unknown keys, missing notebooks, parameters a notebook does not declare.
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
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        _fail(path, unknown[0], f"unknown key(s) {unknown}; allowed: {list(TOP_KEYS)}")
    name = data.get("experiment")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        _fail(path, "experiment", f"must be a name of letters, digits, '-' or '_' (it names folders), got {name!r}")
    defaults = _check_mapping(path, "defaults", data.get("defaults"))
    _check_values(path, "defaults", defaults)
    if "experiment" in defaults:
        _fail(path, "defaults.experiment", "set the experiment name with the top-level `experiment:` key")
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        _fail(path, "stages", "must be a non-empty list of stages (name, notebook, grid, params)")
    root = Path(root if root is not None else Path.cwd()).resolve()
    out_root = (root / output_dir).resolve()

    stages, seen, used_defaults = [], set(), set()
    for i, raw in enumerate(stages_raw):
        where = f"stages[{i}]"
        if not isinstance(raw, Mapping):
            _fail(path, where, "must be a mapping with keys name, notebook, grid, params")
        unknown = sorted(set(raw) - set(STAGE_KEYS))
        if unknown:
            _fail(path, f"{where}.{unknown[0]}", f"unknown stage key(s) {unknown}; allowed: {list(STAGE_KEYS)}")
        sname = raw.get("name")
        if not isinstance(sname, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", sname):
            _fail(path, f"{where}.name", f"must be a name of letters, digits, '-' or '_', got {sname!r}")
        if sname in seen:
            _fail(path, f"{where}.name", f"stage name {sname!r} is used twice")
        seen.add(sname)
        where = f"stages[{i}] ({sname})"
        nb_rel = raw.get("notebook")
        if not isinstance(nb_rel, str):
            _fail(path, f"{where}.notebook", "must be the path of a .ipynb (relative to the repository root)")
        notebook = (root / nb_rel).resolve()
        if not notebook.is_file():
            _fail(path, f"{where}.notebook", f"{nb_rel} does not exist (looked in {root})")
        declared = notebook_parameters(notebook)
        grid = _check_mapping(path, f"{where}.grid", raw.get("grid"))
        params = _check_mapping(path, f"{where}.params", raw.get("params"))
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                _fail(path, f"{where}.grid.{key}", f"must be a non-empty list, got {values!r}; "
                      "put a single fixed value under params")
        _check_values(path, f"{where}.grid", grid)
        _check_values(path, f"{where}.params", params)
        both = sorted(set(grid) & set(params))
        if both:
            _fail(path, f"{where}.params.{both[0]}", "is set both in grid and params; keep one")
        for section, mapping in (("grid", grid), ("params", params)):
            for key in mapping:
                if key == "experiment":
                    _fail(path, f"{where}.{section}.experiment", "set by the top-level `experiment:` key")
                if key not in declared:
                    _fail(path, f"{where}.{section}.{key}", f"{nb_rel} does not declare a parameter {key!r}; "
                          f"it declares {sorted(declared)}")
        base = {k: v for k, v in defaults.items() if k in declared}
        used_defaults.update(base)
        if "experiment" in declared:
            base["experiment"] = name
        stage = Stage(sname, notebook, grid, params)
        names = set()
        for values in expand_grid(grid):
            pname = point_name(values)
            if pname in names:
                _fail(path, f"{where}.grid", f"two points share the file name {pname!r}; make the values distinct")
            names.add(pname)
            stage.points.append(Point(name, sname, pname, notebook, {**base, **params, **values},
                                      out_root / name / sname / f"{pname}.ipynb", root,
                                      force_param=FORCE_PARAM in declared))
        stages.append(stage)
    unused = sorted(set(defaults) - used_defaults)
    if unused:
        _fail(path, f"defaults.{unused[0]}", f"no stage's notebook declares {unused}; check the spelling")
    return Experiment(name, path, root, defaults, stages)


# ---------------------------------------------------------------------------------------------
# Running points
# ---------------------------------------------------------------------------------------------

@dataclass
class PointResult:
    stage: str
    name: str
    status: str  # done | skipped | failed
    seconds: float = 0.0
    error: str | None = None
    output: str | None = None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:
    blob = json.dumps(to_jsonable(data), indent=2).encode("utf-8") + b"\n"
    _atomic_write(path, lambda f: f.write(blob))


def is_done(point: Point) -> bool:
    """True when the point's marker holds the same parameters and its run records still exist."""
    marker = _read_json(point.done_path)
    if not isinstance(marker, Mapping) or marker.get("parameters") != to_jsonable(point.parameters):
        return False
    return all(run_is_done(point.root / d) for d in marker.get("run_dirs", []))


@contextmanager
def _env(**values):
    """Temporarily set environment variables (the kernel papermill starts inherits them)."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure_info(point: Point, err: BaseException) -> dict:
    info = {"experiment": point.experiment, "stage": point.stage, "point": point.name,
            "notebook": str(point.notebook), "parameters": point.parameters, "output": str(point.output),
            "failed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if hasattr(err, "ename") and hasattr(err, "cell_index"):  # papermill.PapermillExecutionError
        source = str(getattr(err, "source", "") or "")
        lines = source.splitlines()
        info.update({
            "cell_index": err.cell_index, "exec_count": getattr(err, "exec_count", None),
            "source_excerpt": "\n".join(lines[:20]) + ("\n..." if len(lines) > 20 else ""),
            "ename": err.ename, "evalue": err.evalue,
            "traceback": [_ANSI.sub("", line) for line in (getattr(err, "traceback", None) or [])][-8:],
        })
    else:  # the kernel died, the notebook was unreadable, ...
        info.update({"cell_index": None, "exec_count": None, "source_excerpt": None,
                     "ename": type(err).__name__, "evalue": str(err), "traceback": []})
    return info


def run_point(point: Point, force: bool = False, log_output: bool = False) -> PointResult:
    """Execute one point with papermill unless it is done; write its done / failed marker."""
    import papermill

    if not force and is_done(point):
        return PointResult(point.stage, point.name, "skipped", output=str(point.output))
    point.output.parent.mkdir(parents=True, exist_ok=True)
    # The marker of an earlier success no longer describes what is on disk once we rerun.
    for stale in (point.done_path, point.manifest_path):
        stale.unlink(missing_ok=True)
    parameters = dict(point.parameters)
    if force and point.force_param:
        parameters[FORCE_PARAM] = True
    start = time.perf_counter()
    try:
        with _env(**{MANIFEST_ENV: str(point.manifest_path)}):
            papermill.execute_notebook(str(point.notebook), str(point.output), parameters=parameters,
                                       kernel_name="python3", cwd=str(point.root), progress_bar=False,
                                       log_output=log_output)
    except Exception as err:  # any failure of one point is recorded; the sweep goes on
        info = _failure_info(point, err)
        _write_json(point.failed_path, info)
        point.manifest_path.unlink(missing_ok=True)
        return PointResult(point.stage, point.name, "failed", time.perf_counter() - start,
                           f"{info['ename']}: {info['evalue']}", str(point.output))
    seconds = time.perf_counter() - start
    run_dirs = []
    if point.manifest_path.exists():
        for line in point.manifest_path.read_text(encoding="utf-8").splitlines():
            d = Path(json.loads(line))
            d = d if d.is_absolute() else point.root / d
            rel = os.path.relpath(d.resolve(), point.root)
            if rel not in run_dirs:
                run_dirs.append(rel)
        point.manifest_path.unlink()
    _write_json(point.done_path, {
        "experiment": point.experiment, "stage": point.stage, "point": point.name,
        "notebook": str(point.notebook), "parameters": point.parameters, "run_dirs": run_dirs,
        "output": str(point.output), "seconds": seconds,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    point.failed_path.unlink(missing_ok=True)
    return PointResult(point.stage, point.name, "done", seconds, output=str(point.output))


def visible_gpus() -> list[str]:
    """CUDA devices this process may use: $CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _init_worker(gpus, threads: int) -> None:
    # Each worker process owns one GPU for its lifetime: the kernels it starts inherit the variable.
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    # N kernels each spinning up one thread per core oversubscribe the CPU, and OpenMP's busy waiting
    # then costs far more than it gains (seen here: a 2-core machine ran 5-10x slower with 2 jobs).
    # Share the cores out unless the user chose a thread count.
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(threads))


def _run_point_job(point_json: dict, force: bool) -> PointResult:
    return run_point(Point.from_json(point_json), force=force)


@dataclass
class SweepSummary:
    results: list = field(default_factory=list)
    dry_run: bool = False

    def _of(self, status):
        return [r for r in self.results if r.status == status]

    @property
    def done(self):
        return self._of("done")

    @property
    def skipped(self):
        return self._of("skipped")

    @property
    def failed(self):
        return self._of("failed")

    @property
    def planned(self):
        return self._of("planned")

    def format(self) -> str:
        if self.dry_run:
            return (f"dry run: {len(self.planned)} point(s) would run, {len(self.skipped)} already done; "
                    "nothing executed")
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (already done), {len(self.failed)} failed"]
        for r in self.failed:
            marker = Path(r.output).with_suffix(".failed.json") if r.output else ""
            lines.append(f"  FAILED {r.stage}/{r.name}: {r.error} (see {marker})")
        return "\n".join(lines)


def _select_stages(experiment: Experiment, only) -> list[Stage]:
    if not only:
        return list(experiment.stages)
    only = [only] if isinstance(only, str) else list(only)
    for name in only:
        experiment.stage(name)  # raises naming the known stages
    return [s for s in experiment.stages if s.name in only]


def run_experiment(experiment: Experiment | str | os.PathLike, *, jobs: int = 1, only=None, force: bool = False,
                   dry_run: bool = False, progress: bool = True, root=None,
                   on_result: Callable[[PointResult], None] | None = None) -> SweepSummary:
    """Run every stage's points in order (a stage finishes before the next starts).

    ``jobs`` points run at once in worker processes; with GPUs visible each worker gets its own
    (``jobs`` is capped at the number of GPUs). ``on_result`` is called after each point (the tests
    use it to interrupt a sweep). ``dry_run`` prints the plan and executes nothing.
    """
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment, root=root)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    summary = SweepSummary(dry_run=dry_run)
    stages = _select_stages(experiment, only)
    if dry_run:
        for stage in stages:
            print(f"[{experiment.name}/{stage.name}] {stage.notebook.name}: {len(stage.points)} point(s)")
            for p in stage.points:
                status = "skipped" if (not force and is_done(p)) else "planned"
                summary.results.append(PointResult(stage.name, p.name, status, output=str(p.output)))
                shown = {k: v for k, v in p.parameters.items() if k in stage.grid or k in stage.params}
                print(f"  {'done, skip' if status == 'skipped' else 'would run'}: {p.name} {json.dumps(to_jsonable(shown))}")
        return summary
    gpus = visible_gpus()
    if gpus and jobs > len(gpus):
        print(f"jobs={jobs} but {len(gpus)} GPU(s) visible: running {len(gpus)} at once (one point per GPU)",
              file=sys.stderr)
        jobs = len(gpus)
    from tqdm.auto import tqdm

    for stage in stages:
        bar = tqdm(total=len(stage.points), desc=f"{experiment.name}/{stage.name}", disable=not progress,
                   unit="point", file=sys.stderr)

        def record(result: PointResult):
            summary.results.append(result)
            bar.update(1)
            bar.set_postfix(done=len(summary.done), skipped=len(summary.skipped), failed=len(summary.failed))
            if result.status == "failed":
                bar.write(f"FAILED {result.stage}/{result.name}: {result.error}")
            if on_result is not None:
                on_result(result)

        try:
            todo = []
            for p in stage.points:  # cheap skips first, in the main process
                if not force and is_done(p):
                    record(PointResult(stage.name, p.name, "skipped", output=str(p.output)))
                else:
                    todo.append(p)
            if jobs == 1 or len(todo) <= 1:
                for p in todo:
                    record(run_point(p, force=force))
            else:
                _run_parallel(todo, jobs, gpus, force, record)
        finally:
            bar.close()
    return summary


def _run_parallel(points: list[Point], jobs: int, gpus: list[str], force: bool, record) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or CUDA
    queue = None
    if gpus:
        queue = ctx.Queue()
        for gpu in gpus[:jobs]:
            queue.put(gpu)
    workers = min(jobs, len(points))
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                               initializer=_init_worker, initargs=(queue, threads))
    futures = {pool.submit(_run_point_job, p.to_json(), force): p for p in points}
    try:
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                p = futures[fut]
                try:
                    result = fut.result()
                except Exception as err:  # the worker itself died
                    result = PointResult(p.stage, p.name, "failed", error=f"{type(err).__name__}: {err}",
                                         output=str(p.output))
                    _write_json(p.failed_path, _failure_info(p, err))
                record(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Slurm
# ---------------------------------------------------------------------------------------------

SLURM_TEMPLATE = """#!/bin/bash
# {experiment} / {stage}: {n} point(s) of {notebook}, one array task each (generated by `clipdg run --slurm`).
# Each task runs one point with papermill and skips it if it is already done; adjust the #SBATCH lines.
#SBATCH --job-name=clipdg-{experiment}-{stage}
#SBATCH --array=0-{last}{throttle}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output={logs}/{experiment}-{stage}-%a.out
set -euo pipefail
cd {root}
${{CLIPDG_PYTHON:-{python}}} -m clipdg_nb.sweep {points} "$SLURM_ARRAY_TASK_ID"{force}
"""


def write_slurm(experiment: Experiment | str | os.PathLike, *, only=None, force: bool = False, jobs: int | None = None,
                out_dir: str | os.PathLike = "outputs/slurm", root=None) -> list[Path]:
    """Write ``<out_dir>/<experiment>-<stage>.sh`` (a job array) + ``.points.json`` per stage, and a
    ``<experiment>-submit.sh`` that submits the stages in order (each after the previous ends)."""
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment, root=root)
    out = (experiment.root / out_dir).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    written, submit = [], ["#!/bin/bash", f"# Submit the stages of {experiment.name} in order.", "set -euo pipefail",
                           f"cd {shlex.quote(str(experiment.root))}", "dep="]
    for stage in _select_stages(experiment, only):
        stem = out / f"{experiment.name}-{stage.name}"
        points = stem.with_suffix(".points.json")
        _write_json(points, [p.to_json() for p in stage.points])
        script = stem.with_suffix(".sh")
        text = SLURM_TEMPLATE.format(
            experiment=experiment.name, stage=stage.name, n=len(stage.points),
            notebook=os.path.relpath(stage.notebook, experiment.root), last=len(stage.points) - 1,
            throttle=f"%{jobs}" if jobs else "", logs=shlex.quote(str(out / "logs")),
            root=shlex.quote(str(experiment.root)), python=shlex.quote(sys.executable),
            points=shlex.quote(str(points)), force=" --force" if force else "")
        _atomic_write(script, lambda f, t=text: f.write(t.encode()))
        script.chmod(0o755)
        submit.append(f'jid=$(sbatch --parsable ${{dep:+--dependency=afterany:$dep}} {shlex.quote(str(script))})')
        submit.append('echo "submitted ' + stage.name + ' as $jid"; dep=$jid')
        written += [script, points]
    submit_path = out / f"{experiment.name}-submit.sh"
    _atomic_write(submit_path, lambda f: f.write(("\n".join(submit) + "\n").encode()))
    submit_path.chmod(0o755)
    return [*written, submit_path]


def run_point_from_file(points_json: str | os.PathLike, index: int, force: bool = False) -> int:
    """Run point ``index`` of a points file written by :func:`write_slurm`; 0 on success or skip."""
    points = json.loads(Path(points_json).read_text(encoding="utf-8"))
    if not 0 <= index < len(points):
        raise IndexError(f"index {index} out of range: {points_json} holds {len(points)} point(s)")
    result = run_point(Point.from_json(points[index]), force=force)
    print(f"{result.stage}/{result.name}: {result.status}" + (f" ({result.error})" if result.error else ""))
    return 1 if result.status == "failed" else 0


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clipdg_nb.sweep",
                                     description="run one point of a points file (used by Slurm array jobs)")
    parser.add_argument("points_json")
    parser.add_argument("index", type=int)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    return run_point_from_file(args.points_json, args.index, force=args.force)


if __name__ == "__main__":
    sys.exit(_main())
