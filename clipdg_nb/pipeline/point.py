"""One point of a sweep: claimed with a file lock, executed by papermill into a temporary notebook,
renamed into place and marked done only on success.

    <point>.ipynb          the last successful execution (never half written)
    <point>.done.json      its parameters, run folders and stage times; a rerun skips it while they are
                           the runs it would make now (`is_done`); runs it no longer makes are superseded
    <point>.failed.ipynb   the last failed execution, for reading; <point>.failed.json: cell, error
    <point>.lock           held by the one process executing the point

No OS error escapes `run_point`: the point fails naming the path and free space.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping
from unittest.mock import patch

from ..fingerprint import one_scan_per_folder
from ..runs import RESULT_FILE, SUPERSEDED_FILE, Run, utc_now
from ..paths import ENV_VAR, MANIFEST_ENV, atomic_path, experiment_dir, read_json, rooted_at, to_jsonable, write_json
from .experiment import FORCE_PARAM, Point
from .oserrors import describe_os_error, out_of_space, space_note

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# = analysis.plots.INLINE_PLOTLYJS_ENV (not imported: plotly stays out of the runner). "0": the
# executed notebooks hold no plotly.js (~5 MB each, saved by papermill at every cell).
INLINE_PLOTLYJS_ENV = "CLIPDG_INLINE_PLOTLYJS"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Intra-op threads of every kernel, whatever the core count or `jobs`: a fixed number keeps the
# numbers (float reductions split over threads) the same on any machine of one CPU type, and N
# kernels each taking every core oversubscribe the CPU. $OMP_NUM_THREADS, when set, wins.
KERNEL_THREADS = 1


@dataclass
class PointResult:
    stage: str
    name: str
    status: str  # done | skipped | failed | planned (dry run) | busy (another process holds it)
    seconds: float = 0.0
    error: str | None = None
    output: str | None = None
    warnings: list = field(default_factory=list)  # warning lines the notebook's kernel wrote to stderr
    stages: dict = field(default_factory=dict)  # seconds per stage (`stage_times`), for executed points


def is_done(point: Point) -> bool:
    """The point's marker holds its parameters, its notebook is there, the runs it lists are finished
    and not superseded, and among them are the runs it would make now, by content (`Run.of` of
    `validate.point_configs`). A point that makes no runs (04_analysis) is done while no run it reads
    is newer than its marker."""
    from .validate import point_configs  # here, not at the top: validate imports the config registry

    if not point.output.is_file():
        return False
    marker = read_json(point.done_path)
    if not isinstance(marker, Mapping) or marker.get("parameters") != to_jsonable(point.parameters):
        return False
    listed = [Run(point.root / d) for d in marker.get("run_dirs", [])]
    if not all(run.is_done() and run.superseded() is None for run in listed):
        return False
    try:
        configs = point_configs(point)
    except (ValueError, TypeError):  # validation says why; such a point is not done
        return False
    with rooted_at(point.root), one_scan_per_folder():
        if configs == [] and not listed:
            return not _newer_runs(point)
        have = {run.path.resolve() for run in listed}
        return all(run.path.resolve() in have and run.is_done() for run in map(Run.of, configs or []))


def _newer_runs(point: Point) -> bool:
    """A run record (or a superseded mark) of the experiment the point reads is newer than its marker."""
    from .validate import declared_defaults

    ns = {**declared_defaults(point.notebook), **point.parameters}
    folders = [experiment_dir(ns[k], ns["experiment"]) for k in ("output_dir", "soups_output_dir")
               if isinstance(ns.get(k), str) and isinstance(ns.get("experiment"), str)]
    try:
        since = point.done_path.stat().st_mtime
        return any(f.stat().st_mtime > since for folder in folders for pattern in ("*/", "soups/*/")
                   for name in (RESULT_FILE, SUPERSEDED_FILE) for f in folder.glob(pattern + name))
    except OSError:  # a file gone while we looked: look again next time
        return True


def kernel_thread_env() -> dict[str, str]:
    """The thread variables every kernel gets: the user's where set, else $OMP_NUM_THREADS or KERNEL_THREADS."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(KERNEL_THREADS)
    return {var: os.environ.get(var) or threads for var in THREAD_VARS}


def record_failure(point: Point, err: BaseException, seconds: float = 0.0, warnings=()) -> PointResult:
    """Write `<point>.failed.json` (the failing cell and error; for a full disk, the free space where
    the point writes) and return the failed result; a record that cannot be written is said too."""
    info = {"experiment": point.experiment, "stage": point.stage, "point": point.name,
            "notebook": str(point.notebook), "parameters": point.parameters,
            "output": str(point.failed_notebook_path) if point.failed_notebook_path.is_file() else None,
            "pid": os.getpid(), "failed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if hasattr(err, "ename") and hasattr(err, "cell_index"):  # papermill.PapermillExecutionError
        lines = str(getattr(err, "source", "") or "").splitlines()
        info.update({
            "cell_index": err.cell_index, "exec_count": getattr(err, "exec_count", None),
            "source_excerpt": "\n".join(lines[:20]) + ("\n..." if len(lines) > 20 else ""),
            "ename": err.ename, "evalue": err.evalue,
            "traceback": [_ANSI.sub("", line) for line in (getattr(err, "traceback", None) or [])][-8:],
        })
    else:  # the kernel or worker died, the notebook was unreadable, the disk is full, ...
        info.update({"cell_index": None, "exec_count": None, "source_excerpt": None,
                     "ename": type(err).__name__, "evalue": str(err), "traceback": []})
    # which files, and how much room is left where the point writes (the kernel's own message may
    # name no file at all: safetensors says only "os error 28")
    if isinstance(err, OSError):
        info["evalue"] = describe_os_error(err, _written_folders(point)).split(": ", 1)[1]
    elif out_of_space(info["evalue"]):
        info["evalue"] += f" ({space_note(_written_folders(point))})"
    error = f"{info['ename']}: {info['evalue']}"
    try:
        write_json(point.failed_path, info)
    except OSError as werr:  # e.g. the same full disk: say so, the sweep still goes on
        point.failed_path.unlink(missing_ok=True)  # an older marker would name another error
        error += f" (and its failure record {point.failed_path.name} could not be written either: {werr.strerror or werr})"
    return PointResult(point.stage, point.name, "failed", seconds, error, str(point.output), list(warnings))


def _written_folders(point: Point) -> list[Path]:
    """Where a point writes: its notebooks' folder, and the output / cache folders it is given."""
    given = [point.parameters.get(key) for key in ("output_dir", "cache_dir")]
    return [point.output.parent, *(point.root / v for v in given if isinstance(v, str) and v)]  # absolute stays


_WARNING_LINE = re.compile(r"(?:^|:\d+: )([A-Z]\w*Warning): (.+)")


def notebook_warnings(nb) -> list[str]:
    """'CacheRebuiltWarning: message' for every warning the kernel wrote to stderr (Python's
    `warnings` format, `file:line: Category: message`), in order, each once."""
    found = []
    for cell in getattr(nb, "cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") != "stream" or out.get("name") != "stderr":
                continue
            for line in _ANSI.sub("", str(out.get("text", ""))).splitlines():
                m = _WARNING_LINE.search(line.strip())
                if m and f"{m[1]}: {m[2].strip()}" not in found:
                    found.append(f"{m[1]}: {m[2].strip()}")
    return found


# Where a point's time goes, in the order it is spent (seconds; `stage_times`).
STAGES = {
    "kernel_start_s": "kernel start",        # papermill's start to the first cell (a new kernel, ready)
    "imports_s": "imports",                  # the cells up to the first one after the parameters (imports, setup)
    "data_s": "data",                        # the runs: loading the dataset, decoding images (run records' timings)
    "train_s": "training",                   # the runs: train.fit
    "eval_s": "evaluation",                  # the runs: logits of every weight variant on every split
    "write_s": "writing",                    # the runs: WILDS metrics, predictions, calibration, the record
    "run_other_s": "models & features",      # the runs' other time: loading models, frozen features, probe fits
    "cells_other_s": "other cells",          # the notebook's other cells (tables, figures, browsers)
    "papermill_s": "notebook saves",         # papermill between cells (it saves the notebook at each cell's start and end)
    "kernel_end_s": "kernel shutdown",       # the last cell's end to papermill's end
    "outside_s": "runner",                   # the point's wall time outside papermill's clock (reading, marker, lock)
}


def _iso_seconds(value) -> float | None:
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp() if value else None
    except ValueError:
        return None


def stage_times(nb, records=(), seconds: float | None = None) -> dict:
    """Seconds per stage of one executed point (keys of STAGES, plus total_s), from papermill's
    timestamps in the notebook and the `timings` of the run records the point wrote; `seconds`: the
    point's wall time as the runner saw it. Without papermill's metadata only the total is known."""
    meta = (getattr(nb, "metadata", None) or {}).get("papermill") or {}
    start, end = _iso_seconds(meta.get("start_time")), _iso_seconds(meta.get("end_time"))
    cells = [(c, (c.get("metadata") or {}).get("papermill") or {}) for c in getattr(nb, "cells", [])]
    ran = [(c, m, _iso_seconds(m.get("start_time")), _iso_seconds(m.get("end_time"))) for c, m in cells]
    ran = [(c, m, a, b) for c, m, a, b in ran if a is not None and b is not None]
    if start is None or end is None or not ran:
        return {} if seconds is None else {"total_s": round(seconds, 3)}
    # the imports: every code cell up to and including the first one after the parameters cells
    tags = [set((c.get("metadata") or {}).get("tags") or []) for c, *_ in ran]
    after = max((i for i, t in enumerate(tags) if t & {"parameters", "injected-parameters"}), default=-1)
    first = next((i for i in range(after + 1, len(ran)) if ran[i][0].get("cell_type") == "code"), after)
    durations = [b - a for *_, a, b in ran]
    runs = {k: sum(float(((r or {}).get("timings") or {}).get(k) or 0.0) for r in records)
            for k in ("data_s", "train_s", "eval_s", "write_s", "total_s")}
    runs_total = runs.pop("total_s")
    known_runs = sum(runs.values())
    out = {"kernel_start_s": ran[0][2] - start, "imports_s": sum(durations[:first + 1]), **runs,
           "run_other_s": max(runs_total - known_runs, 0.0),
           "cells_other_s": max(sum(durations[first + 1:]) - max(runs_total, known_runs), 0.0),
           "papermill_s": max((ran[-1][3] - ran[0][2]) - sum(durations), 0.0),
           "kernel_end_s": max(end - ran[-1][3], 0.0)}
    if seconds is not None:
        out["outside_s"] = max(seconds - (end - start), 0.0)
        out["total_s"] = seconds
    return {k: round(v, 3) for k, v in out.items()}


def _newer(path: Path, since: float | None) -> bool:
    """`path` was written at or after `since`."""
    try:
        return since is not None and path.stat().st_mtime >= since
    except OSError:
        return False


def run_point(point: Point, force: bool = False, wait: bool = True, since: float | None = None) -> PointResult:
    """Execute one point with papermill unless it is done; write its done / failed marker.

    The point is claimed with a file lock: when another process holds it, ``wait=False`` returns
    "busy" at once, ``wait=True`` waits. ``since`` (a sweep's start) says the caller found the point
    not done, or forced it: done-ness is then read again only when another process wrote the marker
    since, and a failure another process recorded since is reported, not run again.
    """
    from filelock import FileLock, Timeout

    result = partial(PointResult, point.stage, point.name, output=str(point.output))
    try:
        point.output.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(point.lock_path)).acquire(blocking=wait):
            if (_newer(point.done_path, since) if since is not None else not force) and is_done(point):
                return result("skipped")
            if _newer(point.failed_path, since):  # failed in another process during this sweep
                info = read_json(point.failed_path) or {}
                return result("failed", error=f"{info.get('ename')}: {info.get('evalue')} (in process {info.get('pid')})")
            for leftover in point.leftovers():  # of attempts that were killed; we hold the lock
                leftover.unlink(missing_ok=True)
            return _execute(point, force)
    except Timeout:
        return result("busy")
    except OSError as err:  # the disk, not the notebook (a marker, the manifest): the sweep goes on
        return result("failed", error=describe_os_error(err, _written_folders(point)))


def kernel_options(socket_dir: str) -> dict:
    """papermill's (nbclient's) options for a point's kernel, all public: IPC sockets in `socket_dir`
    (a private folder: no TCP port, no "running over TCP without encryption" warning per point), and
    the kernel killed once the last cell has run (asked to exit, one with torch loaded often stalls
    until jupyter_client kills it 2.5 s later; every output has arrived and every file is closed)."""
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(socket_dir, "kernel")
    return {"config": config, "shutdown_kernel": "immediate"}


def _execute(point: Point, force: bool) -> PointResult:
    """Run papermill into a temporary notebook; rename it onto `<point>.ipynb` and write the marker
    only on success. On failure the point's earlier outputs are left as they are."""
    import papermill

    before = read_json(point.done_path)  # the runs of its last execution: those it does not make now are superseded
    parameters = {**point.parameters, **({FORCE_PARAM: True} if force and point.force_param else {})}
    fd, manifest = tempfile.mkstemp(dir=point.output.parent, prefix=f".{point.name}.runs.jsonl.")
    os.close(fd)
    manifest = Path(manifest)
    # The kernel papermill starts inherits these (set while it runs); it resolves relative paths from the
    # experiment's root, wherever papermill starts it.
    env = {MANIFEST_ENV: str(manifest), ENV_VAR: str(point.root), INLINE_PLOTLYJS_ENV: "0", **kernel_thread_env()}
    start, wall_start, found = time.perf_counter(), time.time(), []
    try:
        try:
            with patch.dict(os.environ, env), tempfile.TemporaryDirectory(prefix="clipdg-kernel-") as sockets, \
                    atomic_path(point.output, suffix=".ipynb") as tmp:
                try:
                    nb = papermill.execute_notebook(str(point.notebook), str(tmp), parameters=parameters,
                                                    kernel_name="python3", cwd=str(point.root),
                                                    progress_bar=False, **kernel_options(sockets))
                    found = notebook_warnings(nb)
                except BaseException:
                    found = _keep_failed(tmp, point.failed_notebook_path)
                    raise
        except Exception as err:  # any failure of one point is recorded; the sweep goes on
            return record_failure(point, err, time.perf_counter() - start, found)
        run_dirs = list(dict.fromkeys(os.path.relpath((point.root / json.loads(line)).resolve(), point.root)
                                      for line in manifest.read_text(encoding="utf-8").splitlines()))  # each once, in order
    finally:
        manifest.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    # the records of the runs this execution wrote (a run reused from an earlier sweep took no time here)
    written = [Run(point.root / d).record() for d in run_dirs if _newer(point.root / d / RESULT_FILE, wall_start)]
    stages = stage_times(nb, written, seconds)
    write_json(point.done_path, {
        "experiment": point.experiment, "stage": point.stage, "point": point.name,
        "notebook": str(point.notebook), "parameters": point.parameters, "run_dirs": run_dirs,
        "output": str(point.output), "seconds": seconds, "stages": stages,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    supersede(point, before, run_dirs)
    point.failed_path.unlink(missing_ok=True)  # a success leaves no stale failure behind
    point.failed_notebook_path.unlink(missing_ok=True)
    return PointResult(point.stage, point.name, "done", seconds, output=str(point.output), warnings=found,
                       stages=stages)


def supersede(point: Point, before, run_dirs: list[str]) -> None:
    """Mark superseded (kept on disk) the runs the point's previous marker (`before`) listed that its
    new execution did not make, unless another point of the experiment lists them still."""
    gone = set(before.get("run_dirs", []) if isinstance(before, Mapping) else []) - set(run_dirs)
    for m in point.output.parent.parent.glob("*/*.done.json"):  # every stage's points
        gone -= set((read_json(m) or {}).get("run_dirs", [])) if m != point.done_path else set()
    name = f"{point.experiment}/{point.stage}/{point.name}"
    for run in (Run(point.root / d) for d in sorted(gone)):
        if run.record() is not None:
            run.mark_superseded(name, f"{name} ran again ({utc_now()}) and made other runs: its parameters, "
                                      "data or weights changed")


def _keep_failed(tmp: Path, target: Path) -> list[str]:
    """The executed notebook of a failed attempt, kept for reading under its own name only when it
    parses (a full disk leaves half a notebook: never kept under a real name); an older one is
    removed either way (it shows another attempt's error). Returns its warnings."""
    import nbformat

    try:
        nb = nbformat.read(str(tmp), as_version=4)
        nbformat.validate(nb)
    except Exception:  # truncated JSON (a full disk), schema errors, no file
        target.unlink(missing_ok=True)
        return []
    with suppress(OSError):
        tmp.chmod(0o644)
        os.replace(tmp, target)
    return notebook_warnings(nb)
