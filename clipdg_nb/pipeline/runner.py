"""Running an experiment's points with papermill: `clipdg run parameters/X.yaml`.

* checked first (`validate.validate_experiment`): any problem stops the command before a point runs;
* resumable: a succeeded point writes `<point>.done.json` (parameters + the runs it reported through
  `runs.note_runs`) atomically; a rerun skips points whose marker still matches (`point.is_done`);
* safe to run twice at once: a point is claimed with a file lock (`<point>.lock`), so two runs split
  the work and each point executes once;
* never half written: papermill executes into a temporary notebook renamed onto `<point>.ipynb` only
  on success; a failure is kept as `<point>.failed.ipynb` + `<point>.failed.json` (cell, error);
* parallel: `jobs` worker processes dealt round-robin over the visible GPUs; a stage starts once the
  stages it runs `after` have ended (`_run_scheduled`); every kernel gets a fixed thread count
  (`KERNEL_THREADS` or $OMP_NUM_THREADS), so the numbers depend on neither the cores nor `jobs`;
* no orphans: workers watch the runner (`watch_parent`), kernels their worker;
* a full disk or vanished folder fails the point, naming the path and free space (`oserrors`);
* the points' stage times and kernel warnings are summed and printed at the end (`SweepSummary`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..fingerprint import one_scan_per_folder
from ..paths import to_jsonable, write_json
from .experiment import Experiment, Point, Stage, load_experiment
from .oserrors import describe_os_error
from .point import STAGES, PointResult, failure_info, is_done, run_point, set_env

__all__ = ["PointResult", "SweepSummary", "is_done", "run_experiment", "run_point", "select_stages", "visible_gpus"]


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
# Intra-op threads of every kernel, whatever the core count or `jobs`: a fixed number keeps the
# numbers (float reductions split over threads) the same on any machine of one CPU type, and N
# kernels each spinning up one thread per core oversubscribe the CPU (seen here: a 2-core machine
# ran 5-10x slower with 2 jobs). $OMP_NUM_THREADS, when set, is used instead.
KERNEL_THREADS = 1


def kernel_thread_env() -> dict[str, str]:
    """The thread variables every kernel gets: the user's where set, else KERNEL_THREADS (or the
    user's OMP_NUM_THREADS) for the others."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(KERNEL_THREADS)
    return {var: os.environ.get(var) or threads for var in THREAD_VARS}


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def watch_parent(parent: int, interval: float = 1.0) -> None:
    """End this process when `parent` (the runner) is gone, even if it was SIGKILLed: the kernel's
    death signal on Linux (prctl PR_SET_PDEATHSIG), and, everywhere, a daemon thread that polls
    os.getppid() (a reparented process has another parent). A pool worker left behind would
    otherwise run the queued points for nobody, then idle for good. Its kernel notices the worker's
    end by itself (ipykernel polls its parent likewise) and ends too."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still watches

    def poll():
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent:  # the runner died before the watch was set up
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=poll, name="clipdg-watch-parent", daemon=True).start()


def _init_worker(gpus, threads: dict, parent: int | None = None) -> None:
    if parent is not None:
        watch_parent(parent)
    # Each worker process keeps one GPU for its lifetime (shared with others when jobs > GPUs): the
    # kernels it starts inherit the variable.
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    os.environ.update(threads)


def _run_point_job(point_json: dict, force: bool, wait: bool, since: float) -> PointResult:
    return run_point(Point.from_json(point_json), force=force, wait=wait, since=since)


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
            files = [p for p in (Path(r.output).with_suffix(".failed.json"), Path(r.output).with_suffix(".failed.ipynb"))
                     if p.is_file()] if r.output else []
            see = f" (see {' and the executed notebook '.join(map(str, files))})" if files else ""
            lines.append(f"  FAILED {r.stage}/{r.name}: {r.error}{see}")
        return "\n".join(lines + self.format_warnings() + self.format_stages())

    def stage_totals(self) -> dict[str, float]:
        """Seconds per stage (`point.STAGES`) summed over the points executed in this sweep."""
        totals: dict[str, float] = {}
        for r in self.results:
            for k, v in (r.stages or {}).items():
                totals[k] = totals.get(k, 0.0) + v
        return totals

    def format_stages(self) -> list[str]:
        """Where the executed points' time went: each stage summed over them, the slowest stage and
        the slowest point (the points overlap in time when they run in parallel)."""
        timed = [r for r in self.results if r.stages]
        totals = self.stage_totals()
        if not timed or not totals.get("total_s"):
            return []
        total = totals["total_s"]
        shown = [(k, totals[k]) for k in STAGES if totals.get(k, 0.0) >= 0.05]
        worst_key, worst = max(shown, key=lambda kv: kv[1], default=("total_s", total))
        slowest = max(timed, key=lambda r: r.seconds)
        return [f"time per stage, summed over {len(timed)} executed point(s) ({total:.1f} s; points in parallel "
                f"overlap): " + ", ".join(f"{STAGES[k]} {v:.1f}" for k, v in shown),
                f"  slowest stage: {STAGES.get(worst_key, worst_key)} {worst:.1f} s ({worst / total:.0%}); "
                f"slowest point: {slowest.stage}/{slowest.name} {slowest.seconds:.1f} s"]

    def warned(self) -> dict[str, list[str]]:
        """Each warning the points' kernels wrote -> the points (stage/name) that wrote it."""
        out: dict[str, list[str]] = {}
        for r in self.results:
            for w in r.warnings or []:
                out.setdefault(w, []).append(f"{r.stage}/{r.name}")
        return out

    def format_warnings(self) -> list[str]:
        warned = self.warned()
        if not warned:
            return []
        lines = [f"{len(warned)} warning(s) from the points (in full in their executed notebooks):"]
        for text, points in warned.items():
            at = ", ".join(points[:3]) + (f" and {len(points) - 3} more" if len(points) > 3 else "")
            lines.append(f"  WARNING {text} [{at}]")
        return lines


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
    """Run every stage's points; a stage starts once the stages it runs `after` (by default: every
    stage above it) have ended, so with ``jobs`` > 1 independent stages share the workers.

    Every point of the chosen stages is validated first (`validate.validate_experiment`): any
    problem raises one `ValidationError` listing all of them, before anything runs or is touched.
    ``jobs`` points run at once in worker processes; with GPUs visible each worker gets one, dealt
    round-robin (``jobs`` may exceed the GPU count: points then share a GPU). Points another process holds are left for later,
    then waited for. ``on_result`` is called after each point (the tests use it to
    interrupt a sweep). ``dry_run`` validates, prints the plan and executes nothing.
    """
    # here, not at the top: the pool workers import this module, and validation imports the model
    # registry (torch, open_clip: ~3 s that each worker would pay before its first point)
    from .validate import validate_experiment

    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment, root=root)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    summary = SweepSummary(dry_run=dry_run)
    stages = select_stages(experiment, only)
    validate_experiment(experiment, stages, jobs=jobs)
    if dry_run:  # per stage: its fixed parameters on one line, then a table of one line per point
        import pandas as pd
        for stage in stages:
            with one_scan_per_folder():
                done = [not force and is_done(p) for p in stage.points]
            print(f"[{experiment.name}/{stage.name}] {stage.notebook.name}: {len(stage.points)} point(s), "
                  f"{_after_text(experiment, stage)}")
            if stage.params:
                print("  with " + ", ".join(f"{k} {json.dumps(to_jsonable(v))}" for k, v in stage.params.items()))
            rows = []
            for p, skip in zip(stage.points, done):
                status = "skipped" if skip else "planned"
                summary.results.append(PointResult(stage.name, p.name, status, output=str(p.output)))
                rows.append({"": "done, skip" if status == "skipped" else "would run",
                             **{k: p.parameters.get(k) for k in stage.grid}})
            print("  " + pd.DataFrame(rows).to_string(index=False).replace("\n", "\n  "))
        return summary
    since = time.time()  # markers newer than this were written by another process of this sweep
    workers = _make_workers(stages, jobs)  # one set of workers for every stage
    try:
        _run_stages(experiment, stages, force, progress, since, summary, on_result, workers)
    finally:
        if workers is not None:
            workers.close()
    return summary


def _make_workers(stages: list[Stage], jobs: int) -> "_Workers | None":
    """The worker processes for `jobs` points at once (None for one job: it runs in this process).
    With GPUs visible they are dealt round-robin, so with `jobs` above the GPU count several points
    share a GPU (the many small runs of a grid leave one card mostly idle). A run's record does not
    depend on how many points share its GPU: each point is its own process with its own seeds, and
    nothing in a run reads another's state (kernels' float reductions do not depend on the load)."""
    gpus = visible_gpus()
    workers = min(jobs, max(sum(len(s.points) for s in stages), 1))
    if gpus and workers > len(gpus):
        print(f"jobs={jobs} on {len(gpus)} GPU(s): up to {-(-workers // len(gpus))} points share each GPU",
              file=sys.stderr)
    return _Workers(gpus, workers) if jobs > 1 else None


class _StageBars:
    """One progress bar per stage, opened when the stage starts and closed when its last point
    ends; what each point ended as goes to the summary and `on_result`."""

    def __init__(self, experiment, summary, progress: bool, on_result):
        self.experiment, self.summary, self.progress, self.on_result = experiment, summary, progress, on_result
        self.bars: dict = {}

    def open(self, stage: Stage) -> None:
        from tqdm.auto import tqdm

        self.bars[stage.name] = tqdm(total=len(stage.points), desc=f"{self.experiment.name}/{stage.name}",
                                     disable=not self.progress, unit="point", file=sys.stderr)

    def record(self, result: PointResult) -> None:
        self.summary.results.append(result)
        bar = self.bars[result.stage]
        bar.update(1)
        # counts of this stage only (not carried over from the other stages)
        counts = Counter(r.status for r in self.summary.results if r.stage == result.stage)
        bar.set_postfix(done=counts["done"], skipped=counts["skipped"], failed=counts["failed"])
        if result.status == "failed":
            bar.write(f"FAILED {result.stage}/{result.name}: {result.error}")
        if self.on_result is not None:
            self.on_result(result)

    def todo(self, stage: Stage, force: bool) -> list[Point]:
        """The stage's points to execute; those already done are recorded as skipped (cheap, here)."""
        with one_scan_per_folder():  # each dataset folder is scanned once per stage, not once per point
            done = [not force and is_done(p) for p in stage.points]
        for p, skip in zip(stage.points, done):
            if skip:
                self.record(PointResult(stage.name, p.name, "skipped", output=str(p.output)))
        return [p for p, skip in zip(stage.points, done) if not skip]

    def close(self, name: str | None = None) -> None:
        for key in [name] if name is not None else list(self.bars):
            bar = self.bars.pop(key, None)
            if bar is not None:
                bar.close()


def _after_text(experiment: Experiment, stage: Stage) -> str:
    above = [s.name for s in experiment.stages[:experiment.stages.index(stage)]]
    if not stage.after:
        return "starts with the first stage" if above else "the first stage"
    return "after every stage above it" if list(stage.after) == above else f"after {', '.join(stage.after)}"


def _run_stages(experiment, stages, force, progress, since, summary, on_result, workers) -> None:
    bars = _StageBars(experiment, summary, progress, on_result)
    try:
        if workers is not None:
            _run_scheduled(stages, force, bars, since, workers)
            return
        # one at a time: stage by stage in the file's order, which satisfies every stage's `after`
        for stage in stages:
            bars.open(stage)
            todo = bars.todo(stage, force)
            with set_env(**kernel_thread_env()):
                deferred = []
                for p in todo:
                    result = run_point(p, force=force, wait=False, since=since)
                    if result.status == "busy":  # another process runs it: come back at the end
                        deferred.append(p)
                    else:
                        bars.record(result)
                for p in deferred:
                    bars.record(run_point(p, force=force, wait=True, since=since))
            bars.close(stage.name)
    finally:
        bars.close()


def _run_scheduled(stages: list[Stage], force: bool, bars: _StageBars, since: float, workers: "_Workers") -> None:
    """Every chosen stage's points through one set of workers. A stage opens once the stages it
    runs `after` have ended (every point done, skipped or failed; a stage not chosen counts as
    ended); its points join the queue in file order, and a worker that frees up takes the first
    queued point. So independent stages share the workers: no worker idles while one stage's last
    point runs and another stage has points waiting. A point another process holds goes back to
    the end of the queue, to be waited for."""
    chosen = {s.name for s in stages}
    closed, ended = list(stages), set()
    left: dict[str, int] = {}
    queue: list[tuple[Point, bool]] = []  # (point, wait for its lock)
    running: dict = {}  # future -> point

    def end(stage_name: str) -> None:
        ended.add(stage_name)
        bars.close(stage_name)

    def open_ready() -> None:
        opened = True
        while opened:  # a stage with nothing to execute ends at once and may open others
            opened = False
            for stage in [s for s in closed if all(a in ended or a not in chosen for a in s.after)]:
                closed.remove(stage)
                bars.open(stage)
                todo = bars.todo(stage, force)
                left[stage.name] = len(todo)
                queue.extend((p, False) for p in todo)
                if not todo:
                    end(stage.name)
                    opened = True

    def finished(point: Point, result: PointResult) -> None:
        bars.record(result)
        left[point.stage] -= 1
        if left[point.stage] == 0:
            end(point.stage)
            open_ready()

    open_ready()
    try:
        while queue or running:
            while queue and len(running) < workers.workers:
                point, wait_for_lock = queue.pop(0)
                running[workers.submit(_run_point_job, point.to_json(), force, wait_for_lock, since)] = point
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                point = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as err:  # the worker itself died
                    result = _worker_died(point, err)
                if result.status == "busy":  # another process runs it: queued again, behind the rest, waiting
                    queue.append((point, True))
                    continue
                finished(point, result)
    except BaseException:  # an interrupted sweep (Ctrl-C, `on_result` raising): queued points are dropped
        for fut in running:
            fut.cancel()
        raise


def _worker_died(point: Point, err: BaseException) -> PointResult:
    result = PointResult(point.stage, point.name, "failed", error=f"{type(err).__name__}: {err}",
                         output=str(point.output))
    try:
        write_json(point.failed_path, failure_info(point, err))
    except OSError as werr:  # a full disk: the sweep still goes on
        result.error += (f" (and its failure record {point.failed_path.name} could not be written "
                         f"either: {describe_os_error(werr, [point.failed_path.parent])})")
    return result


class _Workers:
    """The worker processes of a sweep, made at the first point and kept for every stage; made
    again after a worker died (a broken pool takes no more points: the queued ones still run)."""

    def __init__(self, gpus: list[str], workers: int):
        self.gpus, self.workers = gpus, workers
        self._pool = None

    def submit(self, fn, *args):
        try:
            return self.pool().submit(fn, *args)
        except BrokenProcessPool:
            self.close()
            return self.pool().submit(fn, *args)

    def pool(self) -> ProcessPoolExecutor:
        import multiprocessing

        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or CUDA
            queue = None
            if self.gpus:
                queue = ctx.Queue()
                for i in range(self.workers):  # round-robin: each GPU gets ceil or floor(workers / GPUs)
                    queue.put(self.gpus[i % len(self.gpus)])
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(queue, kernel_thread_env(), os.getpid()))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

