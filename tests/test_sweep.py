"""The sweep runner over a tiny throwaway notebook: grids, resume, failures, dry runs, YAML errors."""
from __future__ import annotations

import json

import nbformat
import pytest
import yaml

from clipdg_nb.pipeline import experiment as sweep_experiment, runner as sweep_runner
from clipdg_nb.cli import main

PARAMS = '''x = 0  # the grid value
tag = "a"  # a fixed value
fail_on = -1  # the x that raises
'''
BODY = '''import json, os, pathlib
from clipdg_nb.runs import note_runs
pathlib.Path(f"gpu-{x}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
run = pathlib.Path("runs") / f"x{x}"
run.mkdir(parents=True, exist_ok=True)
with open("log.txt", "a") as fh:
    fh.write(f"{x}\\n")
if x == fail_on:
    raise ValueError(f"boom at x={x}")
(run / "result.json").write_text(json.dumps({"x": x}))
note_runs(run)
'''


def write_notebook(path, params=PARAMS, body=BODY):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# throwaway"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def write_experiment(tmp_path, stages, name="t", defaults=None):
    doc = {"experiment": name, "stages": stages}
    if defaults is not None:
        doc["defaults"] = defaults
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path):
    write_notebook(tmp_path / "nb.ipynb")
    return tmp_path


def executed(root):
    log = root / "log.txt"
    return [int(v) for v in log.read_text().split()] if log.exists() else []


def test_grid_expansion_and_point_names(project):
    assert sweep_experiment.expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert sweep_experiment.expand_grid({}) == [{}]
    assert sweep_experiment.point_name({"dataset": "fmow", "fraction": 0.1, "seed": 0}) == "dataset-fmow_fraction-0.1_seed-0"
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [1, 2, 3]},
                                       "params": {"tag": "b"}}], defaults={"fail_on": 9})
    exp = sweep_experiment.load_experiment(path, root=project)
    points = exp.stage("s").points
    assert [p.parameters for p in points] == [{"fail_on": 9, "tag": "b", "x": x} for x in (1, 2, 3)]
    assert points[0].output == project / "outputs/notebooks/t/s/x-1.ipynb"


@pytest.mark.parametrize("stage, key", [
    ({"name": "s", "notebook": "nb.ipynb", "grdi": {"x": [1]}}, "stages[0].grdi"),
    ({"name": "s", "notebook": "missing.ipynb"}, "stages[0] (s).notebook"),
    ({"name": "s", "notebook": "nb.ipynb", "grid": {"y": [1]}}, "stages[0] (s).grid.y"),
    ({"name": "s", "notebook": "nb.ipynb", "params": {"lr": 1}}, "stages[0] (s).params.lr"),
    ({"name": "s", "notebook": "nb.ipynb", "grid": {"x": 3}}, "stages[0] (s).grid.x"),
])
def test_yaml_errors_name_the_file_and_key(project, stage, key):
    path = write_experiment(project, [stage])
    with pytest.raises(sweep_experiment.ExperimentError) as err:
        sweep_experiment.load_experiment(path, root=project)
    assert str(path) in str(err.value) and key in str(err.value)


def test_misspelt_default_and_top_level_key_are_named(project):
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb"}], defaults={"tga": "b"})
    with pytest.raises(sweep_experiment.ExperimentError, match=r"defaults\.tga"):
        sweep_experiment.load_experiment(path, root=project)
    path.write_text("experiment: t\nstage: []\n")
    with pytest.raises(sweep_experiment.ExperimentError, match="stage"):
        sweep_experiment.load_experiment(path, root=project)


def test_dry_run_executes_nothing(project, capsys):
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [1, 2]}}])
    assert main(["run", str(path), "--root", str(project), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()  # a table: a header, then one line per point (no JSON)
    assert lines[lines.index(next(l for l in lines if l.split() == ["x"])) + 1:][:2] == ["  would run  1", "  would run  2"]
    assert "{" not in out
    assert executed(project) == [] and not (project / "outputs").exists()


def test_interrupted_sweep_reruns_only_missing_points(project):
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [0, 1, 2]}}])

    def interrupt(result):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the first point

    with pytest.raises(KeyboardInterrupt):
        sweep_runner.run_experiment(path, root=project, progress=False, on_result=interrupt)
    assert executed(project) == [0]
    marker = json.loads((project / "outputs/notebooks/t/s/x-0.done.json").read_text())
    assert marker["parameters"] == {"x": 0} and marker["run_dirs"] == ["runs/x0"]

    summary = sweep_runner.run_experiment(path, root=project, progress=False)
    assert executed(project) == [0, 1, 2]
    assert [r.name for r in summary.skipped] == ["x-0"] and len(summary.done) == 2

    # everything done: nothing runs; a run record that vanished makes its point run again
    (project / "runs/x1/result.json").unlink()
    summary = sweep_runner.run_experiment(path, root=project, progress=False)
    assert executed(project) == [0, 1, 2, 1] and len(summary.skipped) == 2


def test_failing_point_is_recorded_and_the_others_finish(project, capsys, monkeypatch):
    # two worker processes, so this also covers the parallel path and one GPU per worker
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [0, 1]},
                                       "params": {"fail_on": 0}}])
    assert main(["run", str(path), "--root", str(project), "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    assert "1 done, 0 skipped (already done), 1 failed" in out
    failed = json.loads((project / "outputs/notebooks/t/s/x-0.failed.json").read_text())
    assert failed["ename"] == "ValueError" and "boom at x=0" in failed["evalue"]
    assert "raise ValueError" in failed["source_excerpt"] and failed["cell_index"] >= 1
    assert (project / "outputs/notebooks/t/s/x-1.done.json").exists()
    assert not (project / "outputs/notebooks/t/s/x-0.done.json").exists()
    # the executed notebook of the failure is kept for reading, apart from successful outputs
    assert (project / "outputs/notebooks/t/s/x-0.failed.ipynb").exists()
    assert not (project / "outputs/notebooks/t/s/x-0.ipynb").exists()
    assert failed["output"].endswith("x-0.failed.ipynb") and "x-0.failed.ipynb" in out
    assert not list((project / "outputs/notebooks/t/s").glob(".*"))  # no temporary file left behind
    # each worker owns one of the visible GPUs (which worker ran which point is up to the pool)
    assert {(project / f"gpu-{x}.txt").read_text() for x in (0, 1)} <= {"3", "5"}


def test_slurm_writes_array_script_and_points(project):
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [0, 1, 2]}}])
    assert main(["run", str(path), "--root", str(project), "--slurm", "--jobs", "2"]) == 0
    script = (project / "outputs/slurm/t-s.sh").read_text()
    assert "#SBATCH --array=0-2%2" in script and "-m clipdg_nb.pipeline.slurm" in script
    points = json.loads((project / "outputs/slurm/t-s.points.json").read_text())
    assert [p["parameters"] for p in points] == [{"x": 0}, {"x": 1}, {"x": 2}]
    assert "sbatch" in (project / "outputs/slurm/t-submit.sh").read_text()
    assert executed(project) == []


def test_yaml_exponent_without_dot_is_caught(project):
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "params": {"tag": "1e-3"}}])
    with pytest.raises(sweep_experiment.ExperimentError, match=r"stages\[0\] \(s\)\.params\.tag: '1e-3' is text.*0\.001"):
        sweep_experiment.load_experiment(path, root=project)


def test_kernels_use_ipc_sockets_and_print_no_tcp_warning(project, capfd):
    """Each point's kernel talks over IPC sockets in a private folder: no TCP port, no per-kernel
    'running over TCP without encryption' warning in the sweep's output, and nothing left behind."""
    import glob
    import os
    import tempfile
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "clipdg-kernel-*")))
    path = write_experiment(project, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [0, 1]}}])
    summary = sweep_runner.run_experiment(path, root=project, progress=False)
    assert len(summary.done) == 2
    assert "TCP without encryption" not in capfd.readouterr().err
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "clipdg-kernel-*"))) == before


TIMED_PARAMS = '''x = 0  # the grid value
wait = 0.0  # seconds this point takes
'''
TIMED_BODY = '''import time, pathlib
start = time.time()
time.sleep(wait)
with open("times.txt", "a") as fh:
    fh.write(f"{x} {start} {time.time()}\\n")
'''


BARRIER_BODY = '''import os, pathlib, time
pathlib.Path(f"gpu-{x}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
pathlib.Path(f"started-{x}").touch()
deadline = time.time() + 120  # every point waits for all four: so each ran in a worker of its own
while len(list(pathlib.Path().glob("started-*"))) < 4 and time.time() < deadline:
    time.sleep(0.1)
pathlib.Path(f"together-{x}.txt").write_text(str(len(list(pathlib.Path().glob("started-*")))))
'''


def test_more_jobs_than_gpus_share_the_gpus_round_robin(tmp_path, capsys, monkeypatch):
    """jobs=4 on 2 GPUs: four workers, two on each GPU (a run's record cannot depend on it: see
    `runner.run_experiment`)."""
    monkeypatch.setattr(sweep_runner, "visible_gpus", lambda: ["0", "1"])
    write_notebook(tmp_path / "nb.ipynb", "x = 0  # the grid value\n", BARRIER_BODY)
    path = write_experiment(tmp_path, [{"name": "s", "notebook": "nb.ipynb", "grid": {"x": [0, 1, 2, 3]}}])
    summary = sweep_runner.run_experiment(path, root=tmp_path, jobs=4, progress=False)
    assert len(summary.done) == 4
    assert "jobs=4 on 2 GPU(s): up to 2 points share each GPU" in capsys.readouterr().err
    assert {(tmp_path / f"together-{x}.txt").read_text() for x in range(4)} == {"4"}  # four at once
    assert sorted((tmp_path / f"gpu-{x}.txt").read_text() for x in range(4)) == ["0", "0", "1", "1"]

def test_after_defaults_to_every_stage_above_and_rejects_later_or_unknown_stages(project):
    stages = [{"name": "a", "notebook": "nb.ipynb"}, {"name": "b", "notebook": "nb.ipynb", "after": []},
              {"name": "c", "notebook": "nb.ipynb", "after": "a"}, {"name": "d", "notebook": "nb.ipynb"}]
    exp = sweep_experiment.load_experiment(write_experiment(project, stages), root=project)
    assert [s.after for s in exp.stages] == [(), (), ("a",), ("a", "b", "c")]
    for after, message in ([["d"], r"'d' is not a stage above this one"], [["a", "zz"], "'zz' is not a stage"],
                           [{"a": 1}, "must be a list of names of stages above"]):
        bad = [{"name": "a", "notebook": "nb.ipynb"}, {"name": "b", "notebook": "nb.ipynb", "after": after},
               {"name": "d", "notebook": "nb.ipynb"}]
        with pytest.raises(sweep_experiment.ExperimentError, match=r"stages\[1\] \(b\)\.after: " + message):
            sweep_experiment.load_experiment(write_experiment(project, bad), root=project)


def test_independent_stages_share_the_workers_and_a_dependent_stage_waits(tmp_path, capsys):
    """`after: []` lets a stage's points start while an earlier stage still runs (two workers: the
    short points of `quick` fill the worker `slow` leaves idle); a stage without `after` waits for
    every stage above it."""
    write_notebook(tmp_path / "nb.ipynb", TIMED_PARAMS, TIMED_BODY)
    path = write_experiment(tmp_path, [
        {"name": "slow", "notebook": "nb.ipynb", "grid": {"x": [0]}, "params": {"wait": 4.0}},
        {"name": "quick", "notebook": "nb.ipynb", "after": [], "grid": {"x": [1, 2]}, "params": {"wait": 0.2}},
        {"name": "last", "notebook": "nb.ipynb", "grid": {"x": [3]}}])
    assert main(["run", str(path), "--root", str(tmp_path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "quick] nb.ipynb: 2 point(s), starts with the first stage" in plan
    assert "last] nb.ipynb: 1 point(s), after every stage above it" in plan
    summary = sweep_runner.run_experiment(path, root=tmp_path, jobs=2, progress=False)
    assert len(summary.done) == 4
    times = {int(x): (float(a), float(b)) for x, a, b in
             (line.split() for line in (tmp_path / "times.txt").read_text().splitlines())}
    assert times[1][1] < times[0][1] and times[2][1] < times[0][1]  # quick ran beside slow, not after it
    assert times[3][0] >= max(end for _, end in times.values() if _ != times[3][0])  # last waited for all


def test_slurm_stages_depend_on_the_stages_they_run_after(project):
    path = write_experiment(project, [{"name": "a", "notebook": "nb.ipynb"},
                                      {"name": "b", "notebook": "nb.ipynb", "after": []},
                                      {"name": "c", "notebook": "nb.ipynb"}])
    assert main(["run", str(path), "--root", str(project), "--slurm"]) == 0
    submit = (project / "outputs/slurm/t-submit.sh").read_text()
    assert "jid0=$(sbatch --parsable " + str(project / "outputs/slurm/t-a.sh") in submit
    assert "jid1=$(sbatch --parsable " + str(project / "outputs/slurm/t-b.sh") in submit  # no dependency
    assert "jid2=$(sbatch --parsable --dependency=afterany:$jid0:$jid1 " in submit
