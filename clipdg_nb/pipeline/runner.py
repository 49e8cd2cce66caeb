"""`clipdg run parameters/X.yaml`: an experiment's points through papermill (`point.run_point`),
checked first (`validate.validate_experiment`), done points skipped; `jobs` > 1 runs them in worker
processes dealt round-robin over the visible GPUs, a stage starting once the stages it runs `after`
have ended. The points' stage times and kernel warnings are summed at the end (`SweepSummary`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..fingerprint import one_scan_per_folder
from ..paths import to_jsonable
from .experiment import Experiment, Point, Stage, load_experiment
from .point import STAGES, PointResult, is_done, record_failure, run_point

__all__ = ["SweepSummary", "run_experiment", "select_stages", "visible_gpus"]


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


def _init_worker(gpus, parent: int) -> None:
    """A worker ends when the runner (`parent`) is gone, even SIGKILLed: left behind, it would run
    the queued points for nobody (its kernel polls its parent likewise and ends too). It keeps one
    GPU for its lifetime (shared with others when jobs > GPUs): its kernels inherit the variable."""
    def watch():
        while os.getppid() == parent:  # a reparented process has another parent
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="clipdg-watch-parent", daemon=True).start()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


@dataclass
class SweepSummary:
    results: list = field(default_factory=list)
    dry_run: bool = False

    def _of(self, status):
        return [r for r in self.results if r.status == status]

    done = property(lambda self: self._of("done"))
    skipped = property(lambda self: self._of("skipped"))
    failed = property(lambda self: self._of("failed"))
    planned = property(lambda self: self._of("planned"))

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
        totals: Counter = Counter()
        for r in self.results:
            totals.update(r.stages or {})
        return dict(totals)

    def format_stages(self) -> list[str]:
        """Each stage summed over the executed points, the slowest stage and the slowest point (the
        points overlap in time when they run in parallel)."""
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

    def format_warnings(self) -> list[str]:
        """Each warning the points' kernels wrote, once, with the points that wrote it."""
        warned: dict[str, list[str]] = {}
        for r in self.results:
            for w in r.warnings or []:
                warned.setdefault(w, []).append(f"{r.stage}/{r.name}")
        lines = [f"{len(warned)} warning(s) from the points (in full in their executed notebooks):"] if warned else []
        for text, points in warned.items():
            at = ", ".join(points[:3]) + (f" and {len(points) - 3} more" if len(points) > 3 else "")
            lines.append(f"  WARNING {text} [{at}]")
        return lines


def select_stages(experiment: Experiment, only) -> list[Stage]:
    for name in only or []:
        experiment.stage(name)  # raises naming the known stages
    return [s for s in experiment.stages if not only or s.name in only]


def run_experiment(experiment: Experiment | str | os.PathLike, *, jobs: int = 1, only=None, force: bool = False,
                   dry_run: bool = False, progress: bool = True, root=None,
                   on_result: Callable[[PointResult], None] | None = None) -> SweepSummary:
    """Run every point of the chosen stages (`only`), `jobs` at once; with GPUs visible each worker
    gets one, round-robin (`jobs` may exceed the GPU count: points then share a GPU, and a run's
    record does not depend on it: each point is its own process, reading no other's state).
    ``on_result`` is called after each point; ``dry_run`` validates, prints the plan, runs nothing."""
    # here, not at the top: the pool workers import this module, and validation imports the model
    # registry (torch, open_clip: ~3 s that each worker would pay before its first point)
    from .validate import validate_experiment

    # markers newer than this may be another process's, written after our done checks (taken before
    # validation, as file times lag the clock by up to a tick)
    since = time.time()
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment, root=root)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    summary = SweepSummary(dry_run=dry_run)
    stages = select_stages(experiment, only)
    validate_experiment(experiment, stages, jobs=jobs)
    if dry_run:
        _print_plan(experiment, stages, force, summary)
        return summary
    gpus = visible_gpus()
    workers = min(jobs, max(sum(len(s.points) for s in stages), 1))
    if gpus and workers > len(gpus):
        print(f"jobs={jobs} on {len(gpus)} GPU(s): up to {-(-workers // len(gpus))} points share each GPU",
              file=sys.stderr)
    pool = _Workers(gpus, workers) if jobs > 1 else _InProcess()
    try:
        _run_stages(experiment, stages, force, since, pool, summary, progress, on_result)
    finally:
        pool.close()
    return summary


def _done(stage: Stage, force: bool) -> list[bool]:
    with one_scan_per_folder():  # each dataset folder is scanned once per stage, not once per point
        return [not force and is_done(p) for p in stage.points]


def _print_plan(experiment: Experiment, stages: list[Stage], force: bool, summary: SweepSummary) -> None:
    """Per stage: its fixed parameters on one line, then a table of one line per point."""
    import pandas as pd

    for stage in stages:
        above = [s.name for s in experiment.stages[:experiment.stages.index(stage)]]
        after = f"after {', '.join(stage.after)}"
        if not stage.after:
            after = "starts with the first stage" if above else "the first stage"
        elif list(stage.after) == above:
            after = "after every stage above it"
        print(f"[{experiment.name}/{stage.name}] {stage.notebook.name}: {len(stage.points)} point(s), {after}")
        if stage.params:
            print("  with " + ", ".join(f"{k} {json.dumps(to_jsonable(v))}" for k, v in stage.params.items()))
        rows = []
        for p, done in zip(stage.points, _done(stage, force)):
            summary.results.append(PointResult(stage.name, p.name, "skipped" if done else "planned", output=str(p.output)))
            rows.append({"": "done, skip" if done else "would run", **{k: p.parameters.get(k) for k in stage.grid}})
        print("  " + pd.DataFrame(rows).to_string(index=False).replace("\n", "\n  "))


def _run_stages(experiment, stages, force, since, pool, summary, progress, on_result) -> None:
    """Every chosen stage's points through `pool`, with one progress bar per open stage. A stage
    opens once the stages it runs `after` have ended (a stage not chosen counts as ended); its points
    not done join the queue in file order and a free worker takes the first, so independent stages
    share the workers. A point another process holds goes back to the end of the queue, to be
    waited for (its done-ness is then read again: `point.run_point`'s `since`)."""
    from tqdm.auto import tqdm

    chosen = {s.name for s in stages}
    closed, ended, bars, left = list(stages), set(), {}, {}
    queue: list[tuple[Point, bool]] = []  # (point, wait for its lock)
    running: dict = {}  # future -> point

    def record(result: PointResult) -> None:
        summary.results.append(result)
        bar = bars[result.stage]
        bar.update(1)
        bar.set_postfix(Counter(r.status for r in summary.results if r.stage == result.stage))
        if result.status == "failed":
            bar.write(f"FAILED {result.stage}/{result.name}: {result.error}")
        if on_result is not None:
            on_result(result)
        left[result.stage] -= 1
        if left[result.stage] == 0:  # the stage has ended: open the stages that waited for it
            ended.add(result.stage)
            bars.pop(result.stage).close()
            open_ready()

    def open_ready() -> None:
        for stage in [s for s in closed if all(a in ended or a not in chosen for a in s.after)]:
            if stage not in closed:  # opened already, by a stage that ended in this loop
                continue
            closed.remove(stage)
            bars[stage.name] = tqdm(total=len(stage.points), desc=f"{experiment.name}/{stage.name}",
                                    disable=not progress, unit="point", file=sys.stderr)
            left[stage.name] = len(stage.points)
            for p, done in zip(stage.points, _done(stage, force)):
                if done:
                    record(PointResult(stage.name, p.name, "skipped", output=str(p.output)))
                else:
                    queue.append((p, False))

    try:
        open_ready()
        while queue or running:
            while queue and len(running) < pool.workers:
                point, wait_for_lock = queue.pop(0)
                running[pool.submit(run_point, point, force=force, wait=wait_for_lock, since=since)] = point
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                point = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as err:  # the worker itself died
                    result = record_failure(point, err)
                if result.status == "busy":  # another process runs it: queued again, behind the rest, waiting
                    queue.append((point, True))
                    continue
                record(result)
    except BaseException:  # an interrupted sweep (Ctrl-C, `on_result` raising): queued points are dropped
        for fut in running:
            fut.cancel()
        raise
    finally:
        for bar in bars.values():
            bar.close()


class _InProcess:
    """jobs=1: a point runs here as it is submitted (its kernel is this process's child)."""
    workers = 1

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # recorded as the point's failure, as a worker's would be
            future.set_exception(err)
        return future

    def close(self) -> None:
        pass


class _Workers:
    """The worker processes of a sweep, made at the first point and kept for every stage; made
    again after a worker died (a broken pool takes no more points: the queued ones still run)."""

    def __init__(self, gpus: list[str], workers: int):
        self.gpus, self.workers = gpus, workers
        self._pool = None

    def submit(self, fn, *args, **kwargs) -> Future:
        try:
            return self.pool().submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            self.close()
            return self.pool().submit(fn, *args, **kwargs)

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
                                             initargs=(queue, os.getpid()))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
