"""Running an experiment's points with papermill: `clipdg run parameters/X.yaml`.

* resumable: after a point succeeds, `<point>.done.json` (parameters + the run folders the notebook
  reported through `runs.note_runs`) is written atomically; a rerun skips points whose marker holds
  the same parameters and whose run records still exist;
* fault tolerant: a failing point leaves `<point>.failed.json` (cell, error) and the rest go on;
* parallel: `jobs` points at once in worker processes, one point per GPU when GPUs are visible.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..paths import ENV_VAR
from ..runs import MANIFEST_ENV, Run, read_json, to_jsonable, write_json
from .experiment import FORCE_PARAM, Experiment, Point, Stage, load_experiment

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class PointResult:
    stage: str
    name: str
    status: str  # done | skipped | failed
    seconds: float = 0.0
    error: str | None = None
    output: str | None = None


def is_done(point: Point) -> bool:
    """True when the point's marker holds the same parameters and its run records still exist."""
    marker = read_json(point.done_path)
    if not isinstance(marker, Mapping) or marker.get("parameters") != to_jsonable(point.parameters):
        return False
    return all(Run(point.root / d).is_done() for d in marker.get("run_dirs", []))


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
        # The kernel resolves relative paths from the experiment's root, wherever papermill starts it.
        with _env(**{MANIFEST_ENV: str(point.manifest_path), ENV_VAR: str(point.root)}):
            papermill.execute_notebook(str(point.notebook), str(point.output), parameters=parameters,
                                       kernel_name="python3", cwd=str(point.root), progress_bar=False,
                                       log_output=log_output)
    except Exception as err:  # any failure of one point is recorded; the sweep goes on
        info = _failure_info(point, err)
        write_json(point.failed_path, info)
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
    write_json(point.done_path, {
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


def select_stages(experiment: Experiment, only) -> list[Stage]:
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
    stages = select_stages(experiment, only)
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
                    write_json(p.failed_path, _failure_info(p, err))
                record(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
