"""One point of a sweep: claimed with a file lock, executed by papermill into a temporary notebook,
renamed into place and marked done only on success.

    <point>.ipynb          the last successful execution (never half written)
    <point>.done.json      its parameters, run folders and stage times; a rerun skips it while they are
                           the runs it would make now (`is_done`); runs it no longer makes are superseded
    <point>.failed.ipynb   the last failed execution, for reading; <point>.failed.json: cell, error
    <point>.lock           held by the one process executing the point

Outputs are replaced only by a successful execution, which removes the failure files. No OS error
escapes `run_point`: the point fails naming the path and free space, writing whole files or none.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..fingerprint import one_scan_per_folder
from ..runs import RESULT_FILE, SUPERSEDED_FILE, Run, utc_now
from ..paths import ENV_VAR, MANIFEST_ENV, atomic_path, experiment_dir, read_json, rooted_at, to_jsonable, write_json
from .experiment import FORCE_PARAM, Point
from .oserrors import describe_os_error, out_of_space, space_note

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# = analysis.plots.INLINE_PLOTLYJS_ENV (not imported: plotly stays out of the runner). "0": the
# executed notebooks hold no plotly.js (~5 MB each, saved by papermill at every cell); the reports
# load it once per folder, JupyterLab draws plotly's mimetype with its extension.
INLINE_PLOTLYJS_ENV = "CLIPDG_INLINE_PLOTLYJS"


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
    """True when the point's marker holds the same parameters, its executed notebook is there, the
    runs it lists are finished and not superseded, and among them are the runs it would make now, by
    content (`Run.of` of `validate.point_configs`: settings, the data's fingerprint, the weights'
    digests): a checkpoint retrained over its file or a relabelled metadata CSV makes it run again.
    A point that makes no runs (04_analysis) is done while no run it reads is newer than its marker."""
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


@contextmanager
def set_env(**values):
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


def failure_info(point: Point, err: BaseException) -> dict:
    info = {"experiment": point.experiment, "stage": point.stage, "point": point.name,
            "notebook": str(point.notebook), "parameters": point.parameters,
            "output": str(point.failed_notebook_path), "pid": os.getpid(),
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
    else:  # the kernel died, the notebook was unreadable, the disk is full, ...
        info.update({"cell_index": None, "exec_count": None, "source_excerpt": None,
                     "ename": type(err).__name__, "evalue": str(err), "traceback": []})
    if isinstance(err, OSError) or out_of_space(info["evalue"]):
        # which files, and how much room is left where the point writes (the kernel's own message
        # may name no file at all: safetensors says only "os error 28")
        info["evalue"] = describe_os_error(err, _written_folders(point)).split(": ", 1)[1] \
            if isinstance(err, OSError) else f"{info['evalue']} ({space_note(_written_folders(point))})"
    return info


def _written_folders(point: Point) -> list[Path]:
    """Where a point writes: its notebooks' folder, and the output / cache folders it is given."""
    folders = [point.output.parent]
    for key in ("output_dir", "cache_dir"):
        value = point.parameters.get(key)
        if isinstance(value, str) and value:
            folders.append(Path(value) if Path(value).is_absolute() else point.root / value)
    return folders


def failed_result(point: Point, err: BaseException, seconds: float = 0.0) -> PointResult:
    """A point whose failure is the OS's (the disk, a folder): one line naming the path and free space."""
    return PointResult(point.stage, point.name, "failed", seconds,
                       describe_os_error(err, _written_folders(point)), str(point.output))


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
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def stage_times(nb, records=(), seconds: float | None = None) -> dict:
    """Seconds per stage of one executed point (keys of STAGES, plus total_s), from what papermill
    stores in the notebook (its start and end, each cell's start and end) and the `timings` of the
    run records the point wrote (`records`); `seconds`: the point's wall time as the runner saw it.
    Stages that cannot be told apart (a notebook without papermill's metadata) are left out."""
    meta = (getattr(nb, "metadata", None) or {}).get("papermill") or {}
    start, end = _iso_seconds(meta.get("start_time")), _iso_seconds(meta.get("end_time"))
    cells = [(c, (c.get("metadata") or {}).get("papermill") or {}) for c in getattr(nb, "cells", [])]
    ran = [(c, m, _iso_seconds(m.get("start_time")), _iso_seconds(m.get("end_time"))) for c, m in cells]
    ran = [(c, m, a, b) for c, m, a, b in ran if a is not None and b is not None]
    out: dict = {}
    if start is None or end is None or not ran:
        if seconds is not None:
            out["total_s"] = round(seconds, 3)
        return out
    # the imports: every code cell up to and including the first one after the parameters cells
    tags = [set((c.get("metadata") or {}).get("tags") or []) for c, *_ in ran]
    after = max((i for i, t in enumerate(tags) if t & {"parameters", "injected-parameters"}), default=-1)
    first = next((i for i in range(after + 1, len(ran)) if ran[i][0].get("cell_type") == "code"), after)
    durations = [b - a for *_, a, b in ran]
    imports = sum(durations[:first + 1])
    runs = {k: 0.0 for k in ("data_s", "train_s", "eval_s", "write_s")}
    runs_total = 0.0
    for record in records:
        timings = (record or {}).get("timings") or {}
        for k in runs:
            runs[k] += float(timings.get(k) or 0.0)
        runs_total += float(timings.get("total_s") or 0.0)
    known_runs = sum(runs.values())
    cells_after = sum(durations[first + 1:])
    out = {"kernel_start_s": ran[0][2] - start, "imports_s": imports, **runs,
           "run_other_s": max(runs_total - known_runs, 0.0),
           "cells_other_s": max(cells_after - max(runs_total, known_runs), 0.0),
           "papermill_s": max((ran[-1][3] - ran[0][2]) - sum(durations), 0.0),
           "kernel_end_s": max(end - ran[-1][3], 0.0)}
    if seconds is not None:
        out["outside_s"] = max(seconds - (end - start), 0.0)
        out["total_s"] = seconds
    return {k: round(v, 3) for k, v in out.items()}


def _read_notebook(path: Path):
    """The notebook at `path`, parsed and checked against the schema; None if it does not parse."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        return nb
    except Exception:  # truncated JSON (a full disk), schema errors, an unreadable file
        return None


def _newer(path: Path, since: float | None) -> bool:
    """`path` was written at or after `since` (this sweep's start): by another process of this sweep."""
    try:
        return since is not None and path.stat().st_mtime >= since
    except OSError:
        return False


def run_point(point: Point, force: bool = False, log_output: bool = False, wait: bool = True,
              since: float | None = None) -> PointResult:
    """Execute one point with papermill unless it is done; write its done / failed marker.

    The point is claimed with a file lock first. When another process holds it, ``wait=False``
    returns status "busy" at once (the caller comes back to it later), ``wait=True`` waits. Once
    the lock is held, done-ness is read again: the other process may have finished the point (or,
    when ``since`` is the sweep's start time, finished or failed it during this sweep, even under
    ``force``), and then it is not executed a second time.
    """
    from filelock import FileLock, Timeout

    with one_scan_per_folder():  # its done checks (before and after the lock) scan the data once
        if not force and is_done(point):
            return PointResult(point.stage, point.name, "skipped", output=str(point.output))
        point.output.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(point.lock_path))
        try:
            lock.acquire(blocking=wait)
        except Timeout:
            return PointResult(point.stage, point.name, "busy", output=str(point.output))
        try:
            if (not force or _newer(point.done_path, since)) and is_done(point):
                return PointResult(point.stage, point.name, "skipped", output=str(point.output))
            if _newer(point.failed_path, since):  # failed in another process during this sweep
                info = read_json(point.failed_path) or {}
                return PointResult(point.stage, point.name, "failed",
                                   error=f"{info.get('ename')}: {info.get('evalue')} (in process {info.get('pid')})",
                                   output=str(point.output))
            for leftover in point.leftovers():  # of attempts that were killed; we hold the lock
                leftover.unlink(missing_ok=True)
            return _execute(point, force, log_output)
        except OSError as err:  # the disk, not the notebook (a marker, the manifest): the sweep goes on
            return failed_result(point, err)
        finally:
            lock.release()


def kernel_options(socket_dir: str) -> dict:
    """papermill's (nbclient's) options for a point's kernel, all public:
    * IPC sockets in `socket_dir` (a private temporary folder): files only this user can reach, no
      TCP port opened, and no "Kernel is running over TCP without encryption" warning per point;
    * `shutdown_kernel="immediate"`: the kernel is killed (with its process group) once the last
      cell has run, instead of asked to exit: a kernel with torch loaded often stalls in its exit
      until jupyter_client terminates it 2.5 s later, and the interrupt sent before the request
      could log "KeyboardInterrupt caught in kernel". Nothing is lost: every output has arrived
      and every file the notebook wrote is closed (`paths.atomic_path`) by then."""
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(socket_dir, "kernel")
    return {"config": config, "shutdown_kernel": "immediate"}


def _execute(point: Point, force: bool, log_output: bool) -> PointResult:
    """Run papermill into a temporary notebook; rename it onto `<point>.ipynb` and write the marker
    only on success. On failure the executed notebook becomes `<point>.failed.ipynb` (when it
    parses) and the point's earlier outputs are left as they are."""
    import papermill

    before = read_json(point.done_path)  # the runs of its last execution: those it does not make now are superseded
    parameters = dict(point.parameters)
    if force and point.force_param:
        parameters[FORCE_PARAM] = True
    fd, manifest = tempfile.mkstemp(dir=point.output.parent, prefix=f".{point.name}.runs.jsonl.")
    os.close(fd)
    manifest = Path(manifest)
    start, wall_start, found, nb = time.perf_counter(), time.time(), [], None
    try:
        try:
            # The kernel resolves relative paths from the experiment's root, wherever papermill starts it.
            with set_env(**{MANIFEST_ENV: str(manifest), ENV_VAR: str(point.root), INLINE_PLOTLYJS_ENV: "0"}), \
                    tempfile.TemporaryDirectory(prefix="clipdg-kernel-") as sockets, \
                    atomic_path(point.output, suffix=".ipynb") as tmp:
                try:
                    nb = papermill.execute_notebook(str(point.notebook), str(tmp), parameters=parameters,
                                                    kernel_name="python3", cwd=str(point.root),
                                                    progress_bar=False, log_output=log_output,
                                                    **kernel_options(sockets))
                    found = notebook_warnings(nb)
                except BaseException:
                    found = _keep_failed(tmp, point.failed_notebook_path)
                    raise
        except Exception as err:  # any failure of one point is recorded; the sweep goes on
            info = failure_info(point, err)
            if not point.failed_notebook_path.is_file():
                info["output"] = None  # no executed notebook to read (it did not parse, or none was written)
            error = f"{info['ename']}: {info['evalue']}"
            try:
                write_json(point.failed_path, info)
            except OSError as werr:  # e.g. the same full disk: say so, the sweep still goes on
                point.failed_path.unlink(missing_ok=True)  # an older marker would name another error
                error += (f" (and its failure record {point.failed_path.name} could not be written either: "
                          f"{werr.strerror or werr})")
            return PointResult(point.stage, point.name, "failed", time.perf_counter() - start,
                               error, str(point.output), found)
        run_dirs = []
        for line in manifest.read_text(encoding="utf-8").splitlines():
            d = Path(json.loads(line))
            d = d if d.is_absolute() else point.root / d
            rel = os.path.relpath(d.resolve(), point.root)
            if rel not in run_dirs:
                run_dirs.append(rel)
    finally:
        manifest.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    stages = stage_times(nb, _records_written(point, run_dirs, wall_start), seconds)
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


def supersede(point: Point, before, run_dirs: list[str]) -> list[str]:
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
    return sorted(gone)


def _records_written(point: Point, run_dirs: list[str], since: float) -> list[dict]:
    """The records of the runs this execution wrote (a run reused from an earlier sweep took no time
    here; its record holds the timings of the execution that wrote it)."""
    records = []
    for d in run_dirs:
        run = Run(point.root / d)
        try:
            fresh = (run.path / RESULT_FILE).stat().st_mtime >= since
        except OSError:
            continue
        if fresh:
            records.append(run.record())
    return records


def _keep_failed(tmp: Path, target: Path) -> list[str]:
    """The executed notebook of a failed attempt, for reading, under its own name, only when it
    parses (a full disk leaves half a notebook: it is dropped, never kept under a real name). An
    older failed notebook is removed either way: it would show another attempt's error. Returns
    the warnings the notebook holds."""
    nb = _read_notebook(tmp) if tmp.is_file() and tmp.stat().st_size else None
    try:
        if nb is None:
            target.unlink(missing_ok=True)
            return []
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except OSError:
        pass
    return notebook_warnings(nb) if nb is not None else []
