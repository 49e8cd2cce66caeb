"""Faults injected into sweeps: a run killed half-way, two runs at once, a failing rerun, bad values.

A tiny throwaway notebook (no torch) logs each execution, writes a run record and lists it; the
real 02_few_shot_sweep notebook is only inspected (validation starts no kernel).
"""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from clipdg_nb.cli import main
from clipdg_nb.pipeline import point, runner
from clipdg_nb.pipeline.validate import ValidationError

REPO = Path(__file__).resolve().parents[1]
PARAMS = '''x = 0  # the grid value
pause = 0.0  # seconds a point takes
fail_on = -1  # the x that raises
warn_on = -1  # the x that warns as a damaged cache does
'''
BODY = '''import json, os, pathlib, time, warnings
pathlib.Path(f"kernel-{x}.pid").write_text(str(os.getpid()))
with open("log.txt", "a") as fh:
    fh.write(f"{x}\\n")
pathlib.Path(f"threads-{x}.txt").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
time.sleep(pause)
if x == warn_on:
    class CacheRebuiltWarning(UserWarning):
        pass
    warnings.warn(f"decoded cache of point {x} was damaged; rebuilt", CacheRebuiltWarning)
while pathlib.Path(f"hold-{x}").exists():  # a test holds this point here until it is killed
    time.sleep(0.05)
if x == fail_on or pathlib.Path(f"fail-{x}").exists():
    raise ValueError(f"boom at x={x}")
run = pathlib.Path("runs") / f"x{x}"
run.mkdir(parents=True, exist_ok=True)
(run / "result.json").write_text(json.dumps({"x": x, "square": x * x}))
# what runs.note_runs does, without importing pandas into every kernel
with open(os.environ["CLIPDG_SWEEP_MANIFEST"], "a") as fh:
    fh.write(json.dumps(str(run)) + "\\n")
'''


def make_project(root: Path, xs, pause=0.0, params=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(PARAMS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / "nb.ipynb"))
    return write_yaml(root, xs, {"pause": pause, **(params or {})})


def write_yaml(root: Path, xs, params) -> Path:
    doc = {"experiment": "t", "stages": [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": list(xs)},
                                          "params": params}]}
    path = root / "t.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def folder(root: Path) -> Path:
    return root / "outputs/notebooks/t/s"


def executions(root: Path) -> list[int]:
    log = root / "log.txt"
    return sorted(int(v) for v in log.read_text().split()) if log.exists() else []


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in point.THREAD_VARS}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra}


def start_cli(path: Path, root: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipdg_nb.cli", "run", str(path), "--root", str(root),
                             "--no-progress", *args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a command started by `start_cli` and every process it started (its kernels)."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()


def records(root: Path) -> dict:
    """What a sweep leaves that must not depend on how it got there: run records, done markers
    (less timings and absolute paths) and the parameters in each executed notebook."""
    out = {}
    for p in sorted((root / "runs").glob("*/result.json")):
        out[str(p.relative_to(root))] = p.read_bytes()
    for p in sorted(folder(root).glob("*.done.json")):
        m = json.loads(p.read_text())
        out[p.name] = {k: m[k] for k in ("experiment", "stage", "point", "parameters", "run_dirs")}
    for p in sorted(folder(root).glob("*.ipynb")):
        out[p.name] = nbformat.read(str(p), as_version=4).metadata.papermill.parameters  # valid JSON
    return out


def assert_clean(root: Path) -> None:
    """Every notebook complete, every marker readable, no temporary file left behind."""
    for p in folder(root).glob("*.ipynb"):
        nbformat.validate(nbformat.read(str(p), as_version=4))
    for p in folder(root).glob("*.done.json"):
        assert isinstance(json.loads(p.read_text()), dict)
    assert not list(folder(root).glob(".*")), list(folder(root).glob(".*"))


@pytest.mark.slow
def test_sweep_killed_half_way_resumes_to_the_records_of_an_uninterrupted_one(tmp_path):
    xs = range(4)
    reference = make_project(tmp_path / "ref", xs)
    runner.run_experiment(reference, root=tmp_path / "ref", progress=False)

    root = tmp_path / "killed"
    path = make_project(root, xs)
    (root / "hold-2").touch()  # the third point waits in its last cell
    proc = start_cli(path, root)
    try:
        deadline = time.monotonic() + 180
        # SIGKILL (the command and its kernel) once two points are done and the third is executing
        while not (len(list(folder(root).glob("*.done.json"))) >= 2 and len(executions(root)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
    finally:
        kill_group(proc)
        # the kernel runs in its own session (jupyter_client): killed too, as if the machine died
        kernel = int((root / "kernel-2.pid").read_text()) if (root / "kernel-2.pid").exists() else None
        if kernel is not None:
            try:
                os.kill(kernel, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (root / "hold-2").unlink()
    assert len(list(folder(root).glob("*.done.json"))) == 2
    assert list(folder(root).glob(".x-2.ipynb.*")), "the killed point was being written"
    assert not (folder(root) / "x-2.ipynb").exists()  # never half a notebook under its real name

    summary = runner.run_experiment(path, root=root, progress=False)
    assert [r.name for r in summary.skipped] == ["x-0", "x-1"] and len(summary.done) == 2
    assert records(root) == records(tmp_path / "ref")
    assert_clean(root)
    assert executions(root) == [0, 1, 2, 2, 3]  # only the killed point ran twice


@pytest.mark.slow
def test_two_runs_at_once_split_the_points_and_execute_each_once(tmp_path):
    xs = range(6)
    path = make_project(tmp_path, xs, pause=0.5)
    first = start_cli(path, tmp_path, "--jobs", "2")  # worker processes
    second = start_cli(path, tmp_path)  # in-process
    try:
        outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    finally:
        for p in (first, second):
            kill_group(p)
    assert [first.returncode, second.returncode] == [0, 0], outs
    assert executions(tmp_path) == list(xs)  # each point exactly once
    done = [int(out.split(" done,")[0].split()[-1]) for out in outs]
    assert sum(done) == len(xs) and min(done) >= 1, outs  # both did part of the work
    assert_clean(tmp_path)
    for x in xs:
        marker = json.loads((folder(tmp_path) / f"x-{x}.done.json").read_text())
        assert marker["parameters"]["x"] == x and marker["run_dirs"] == [f"runs/x{x}"]
        # a fixed thread count per kernel, whatever the cores or --jobs
        assert (tmp_path / f"threads-{x}.txt").read_text() == str(point.KERNEL_THREADS)
    assert len(runner.run_experiment(path, root=tmp_path, dry_run=True, progress=False).skipped) == len(xs)


def test_failing_rerun_leaves_the_earlier_outputs_byte_for_byte(tmp_path, capsys):
    path = make_project(tmp_path, [0])
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 0
    kept = {name: (folder(tmp_path) / name).read_bytes() for name in ("x-0.ipynb", "x-0.done.json")}
    kept["result"] = (tmp_path / "runs/x0/result.json").read_bytes()

    def unchanged():
        now = {name: (folder(tmp_path) / name).read_bytes() for name in ("x-0.ipynb", "x-0.done.json")}
        return {**now, "result": (tmp_path / "runs/x0/result.json").read_bytes()} == kept

    # a forced rerun with the same parameters that fails
    (tmp_path / "fail-0").touch()
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress", "--force"]) == 1
    assert unchanged()
    failed_nb = nbformat.read(str(folder(tmp_path) / "x-0.failed.ipynb"), as_version=4)
    assert "boom at x=0" in json.dumps(failed_nb)
    assert json.loads((folder(tmp_path) / "x-0.failed.json").read_text())["ename"] == "ValueError"
    assert main(["run", str(path), "--root", str(tmp_path), "--dry-run"]) == 0
    assert re.search(r"^\s*done, skip\s+0$", capsys.readouterr().out, re.M)  # the earlier success still counts

    # a rerun with changed parameters that fails
    (tmp_path / "fail-0").unlink()
    write_yaml(tmp_path, [0], {"pause": 0.0, "fail_on": 0})
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 1
    assert unchanged()
    assert executions(tmp_path) == [0, 0, 0]
    assert_clean(tmp_path)

    # a successful rerun replaces the outputs and clears the failure
    write_yaml(tmp_path, [0], {"pause": 0.0, "fail_on": 5})
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 0
    assert not (folder(tmp_path) / "x-0.failed.ipynb").exists() and not (folder(tmp_path) / "x-0.failed.json").exists()
    assert json.loads((folder(tmp_path) / "x-0.done.json").read_text())["parameters"]["fail_on"] == 5


BAD = {
    "epochs='four'": "epochs='four' must be an integer >= 1",
    "fraction 0": "fraction=0 must be > 0",
    "fraction 1.5": "fraction=1.5 must be <= 1",
    "dataset": "dataset='fmwo' is not valid",
    "scalar lrs": "lrs=0.0003 must be a non-empty list",
    "methods": "methods: 'finetun' is not a trained method",
    "root_dir": "nowhere': no WILDS dataset fmow_v1.1/",  # the value resolved from the project root
    "pretrained": "pretrained='weights/missing.safetensors': no such file",
    "output_dir": "a-file/runs' is not writable",
    "select_split": "select_split='test': choices are made on a validation split of 'fmow'",
}


def test_bad_values_are_all_reported_up_front_and_nothing_runs(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    doc = {"experiment": "bad",
           "defaults": {"root_dir": "nowhere", "pretrained": "weights/missing.safetensors", "output_dir": "a-file/runs"},
           "stages": [
               {"name": "sweep", "notebook": str(REPO / "notebooks/02_few_shot_sweep.ipynb"),
                "grid": {"dataset": ["fmow", "fmwo"], "fraction": [0, 1.5]},
                "params": {"epochs": "four", "lrs": 3.0e-4, "methods": ["finetun"]}},
               {"name": "analysis", "notebook": str(REPO / "notebooks/04_analysis.ipynb"),
                "params": {"select_split": "test"}}]}
    path = tmp_path / "parameters/bad.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    # outputs of an earlier successful run of one point: a bad rerun must not touch them
    earlier = tmp_path / "outputs/notebooks/bad/sweep"
    earlier.mkdir(parents=True)
    kept = {"dataset-fmow_fraction-0.ipynb": b'{"cells": []}', "dataset-fmow_fraction-0.done.json": b'{"x": 1}'}
    for name, data in kept.items():
        (earlier / name).write_bytes(data)

    for extra in (["--dry-run"], []):
        assert main(["run", str(path), "--root", str(tmp_path), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert "nothing was run" in err
        lines = err.splitlines()
        for case, text in BAD.items():
            hits = [line for line in lines if text in line]
            assert hits, f"{case} not reported:\n{err}"
            stage = "analysis" if case == "select_split" else "sweep"
            assert all(line.lstrip().startswith(f"{path}: stage {stage}, point ") for line in hits), hits
        assert {p.name: p.read_bytes() for p in earlier.iterdir()} == kept  # nothing touched
        assert sorted(p.name for p in (tmp_path / "outputs").rglob("*")) == sorted(["notebooks", "bad", "sweep", *kept])

    with pytest.raises(ValidationError) as info:
        runner.run_experiment(path, root=tmp_path, dry_run=True, progress=False)
    assert len(info.value.problems) >= len(BAD)


def test_thread_count_is_fixed_unless_the_user_sets_it(monkeypatch):
    for var in point.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert set(point.kernel_thread_env().values()) == {str(point.KERNEL_THREADS)}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert set(point.kernel_thread_env().values()) == {"3"}


def test_full_disk_fails_the_point_in_one_line_writes_nothing_half_and_the_sweep_goes_on(tmp_path, capsys,
                                                                                          monkeypatch):
    """ENOSPC injected where a full disk strikes: papermill writes half of point x-0's notebook, then
    the failure record cannot be renamed into place either. Before: a truncated `x-0.failed.ipynb`
    and a crash with chained tracebacks."""
    import errno

    import papermill.iorw as iorw

    path = make_project(tmp_path, [0, 1])
    real_write, real_replace = iorw.LocalHandler.write, os.replace

    def full(where):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))

    def write(self, buf, where):
        if os.path.basename(where).startswith(".x-0."):  # the notebook papermill writes for x-0
            with open(where, "w") as fh:
                fh.write(buf[: len(buf) // 2])
            raise full(where)
        return real_write(self, buf, where)

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("x-0.failed.json"):
            raise full(src)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(iorw.LocalHandler, "write", write)
    monkeypatch.setattr(os, "replace", replace)
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    line = next(line for line in out.splitlines() if "FAILED s/x-0" in line)
    assert "No space left on device" in line and str(folder(tmp_path)) in line, line
    assert "free on the filesystem of" in line and "failure record x-0.failed.json could not be written" in line, line
    assert not (folder(tmp_path) / "x-0.failed.ipynb").exists()  # half a notebook is not kept
    assert not (folder(tmp_path) / "x-0.failed.json").exists() and not (folder(tmp_path) / "x-0.ipynb").exists()
    assert (folder(tmp_path) / "x-1.done.json").is_file() and executions(tmp_path) == [1]  # the sweep went on
    assert_clean(tmp_path)

    monkeypatch.setattr(iorw.LocalHandler, "write", real_write)  # space again: the point runs
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 0
    assert executions(tmp_path) == [0, 1]
    assert_clean(tmp_path)


def _children() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state not in ("Z", "X"):
                out[int(entry.name)] = int(ppid)
    return out


def _descendants(pid: int) -> set[int]:
    parents, found, todo = _children(), set(), [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("jobs", [2, 1])
def test_kill_9_of_a_parallel_run_ends_its_workers_and_kernels(tmp_path, jobs):
    """Before: the pool workers outlived a SIGKILLed `clipdg run --jobs 2`, ran the queued points
    for nobody, then idled for good. With one job the kernel is the runner's own child."""
    path = make_project(tmp_path, range(4))
    for x in range(4):
        (tmp_path / f"hold-{x}").touch()  # every point waits in its last cell
    proc, tree = start_cli(path, tmp_path, "--jobs", str(jobs)), set()
    try:
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob("kernel-*.pid"))) < jobs:  # every worker is executing a point
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        kernels = {int(p.read_text()) for p in tmp_path.glob("kernel-*.pid")}
        tree = _descendants(proc.pid)
        assert kernels <= tree and len(tree - kernels) >= (2 if jobs > 1 else 0), (tree, kernels)
        proc.kill()  # SIGKILL of the runner alone, as `kill -9 <pid>` does
        proc.wait()
        for x in range(4):
            (tmp_path / f"hold-{x}").unlink()  # a worker left alive would now finish and take the next point
        deadline = time.monotonic() + 30
        while tree & set(_children()) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = tree & set(_children())
        assert not left, {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left}
        time.sleep(1.0)
        assert len(executions(tmp_path)) == jobs  # no queued point ran after the runner died
    finally:
        kill_group(proc)
        for pid in tree & set(_children()):  # what a failed check leaves running
            os.kill(pid, signal.SIGKILL)


def test_a_point_that_succeeds_after_failing_leaves_no_stale_failure_file_or_page(tmp_path, capsys):
    """Before: `<point>.failed.html` stayed in the report folder and the index listed it."""
    path = make_project(tmp_path, [0, 1])
    reports, notebooks = tmp_path / "outputs/reports", tmp_path / "outputs/notebooks"
    report = ["report", "--notebooks", str(notebooks), "--out", str(reports), "--root", str(tmp_path)]
    (tmp_path / "fail-0").touch()
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 1
    assert main(report) == 0
    assert (reports / "t/s/x-0.failed.html").is_file()
    stages, stage = (reports / "stages.html").read_text(), (reports / "t/s/index.html").read_text()
    assert "<b>1 failed</b>" in stages and "x-0.failed.html" in stage

    (tmp_path / "fail-0").unlink()
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress"]) == 0
    assert sorted(p.name for p in folder(tmp_path).glob("x-0.*")) == ["x-0.done.json", "x-0.ipynb", "x-0.lock"]
    assert main(report) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (reports / "t/s").iterdir()) == ["index.html", "x-0.html", "x-1.html"]
    stages, stage = (reports / "stages.html").read_text(), (reports / "t/s/index.html").read_text()
    assert "<b>0 failed</b>" in stages and "failed.html" not in stage and "class=\"clipdg-failed\"" not in stage
    assert stage.count('<span class="clipdg-done">done</span>') == 2  # the status the done markers hold


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_what_the_points_warned_is_printed_at_the_end_of_the_run(tmp_path, capsys, jobs):
    """Before: a rebuilt cache's warning was only in the executed notebook's stderr."""
    path = make_project(tmp_path, [0, 1, 2], params={"warn_on": 1})
    assert main(["run", str(path), "--root", str(tmp_path), "--no-progress", "--jobs", jobs]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 done, 0 skipped (already done), 0 failed"
    assert out[1].startswith("1 warning(s) from the points")
    assert out[2] == "  WARNING CacheRebuiltWarning: decoded cache of point 1 was damaged; rebuilt [s/x-1]"
    assert out[3].startswith("time per stage, summed over 3 executed point(s)") and len(out) == 5


def test_a_pool_broken_by_a_dead_worker_is_replaced_for_the_next_point():
    """A worker that dies breaks its pool (concurrent.futures' BrokenProcessPool): the point it ran
    fails, and the next point gets a new pool."""
    import operator
    from concurrent.futures.process import BrokenProcessPool

    workers = runner._Workers(gpus=[], workers=1)
    try:
        with pytest.raises(BrokenProcessPool):
            workers.submit(os._exit, 1).result(timeout=120)
        assert workers.submit(operator.add, 2, 3).result(timeout=120) == 5
    finally:
        workers.close()


def test_a_point_that_raises_in_process_becomes_its_failure_not_the_sweeps():
    """jobs=1 runs a point in the runner's process: an exception it raises is the point's (recorded,
    as a dead worker's is), while an interrupt still ends the sweep."""
    from clipdg_nb.pipeline.runner import _InProcess

    future = _InProcess().submit(lambda: 1 / 0)
    assert isinstance(future.exception(), ZeroDivisionError)
    with pytest.raises(KeyboardInterrupt):
        _InProcess().submit(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
