"""The notebooks say what they did: a run read back instead of trained is named (with how to force a
rerun), and 04_analysis finds the experiment to analyse instead of assuming one."""
from __future__ import annotations

import json
import os

import pytest

from clipdg_nb import methods
from clipdg_nb.analysis import experiments_with_runs, find_experiment
from clipdg_nb.config import FinetuneConfig
from clipdg_nb.runs import Run, say_reused


def test_a_reused_run_is_marked_and_named_with_how_to_force(easy_root, run_kwargs, capsys):
    cfg = FinetuneConfig(root_dir=str(easy_root), method="linear_probe", **run_kwargs)
    first = methods.run(cfg)
    assert "reused" not in first and say_reused(first) == [] and capsys.readouterr().out == ""
    again = methods.run(cfg)
    assert again["reused"] is True and again["created_at"] == first["created_at"]
    assert "reused" not in json.loads((Run.of(cfg).path / "result.json").read_text())  # never written
    lines = say_reused(first, again)
    assert capsys.readouterr().out.splitlines() == lines and len(lines) == 2
    assert lines[0].startswith(f"REUSED: {first['run_id']} finished earlier ({first['created_at'][:10]} ")
    assert f"read back from {Run.of(cfg).path}." in lines[0]
    assert "force=True" in lines[0] and "-p force True" in lines[0] and "clipdg run --force" in lines[0]
    assert lines[1] == "1 of 2 runs reused; the others were computed now"
    forced = methods.run(cfg, force=True)  # the rerun the message points to
    assert "reused" not in forced and forced["created_at"] >= first["created_at"]


def _record(root, experiment, run_id, dataset, mtime):
    path = root / experiment / run_id / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": run_id, "dataset": dataset, "metrics": {}}))
    os.utime(path, (mtime, mtime))


def test_analysis_takes_the_only_experiment_with_runs_else_lists_them(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="make demo"):
        find_experiment(out)
    _record(out, "demo", "fmow-a", "fmow", 1_000_000)
    _record(out, "demo", "iwildcam-a", "iwildcam", 1_000_300)
    _record(out, "scratch", "iwildcam-b", "iwildcam", 1_000_600)  # newest, but iwildcam only
    (out / "ablation" / "demo" / "fmow-d").mkdir(parents=True)  # a nested output_dir is not an experiment
    (out / "empty" / "unfinished").mkdir(parents=True)  # no result.json: not a run
    name, why = find_experiment(out, None, "fmow")
    assert name == "demo" and why.startswith("analysing experiment 'demo' under") and "the only one" in why
    _record(out, "old", "fmow-c", "fmow", 1_000_100)
    table = experiments_with_runs(out)
    assert list(table["experiment"]) == ["scratch", "demo", "old"]
    assert list(table["datasets"]) == ["iwildcam", "fmow, iwildcam", "fmow"] and list(table["runs"]) == [1, 2, 1]
    # a hand run beside the demo: no guess, a list and the parameter that chooses
    with pytest.raises(ValueError, match=r"2 experiments .* have fmow runs; which one\? demo \(2 runs, newest .*\); "
                                         r"old \(1 runs, .*papermill -p experiment demo"):
        find_experiment(out, None, "fmow")
    with pytest.raises(ValueError, match=r"scratch \(1 runs.*demo \(2 runs"):
        find_experiment(out, None, "iwildcam")
    assert find_experiment(out, "old", "fmow")[0] == "old"
    with pytest.raises(FileNotFoundError, match=r"'scratch' has no finished fmow runs .*it has iwildcam runs: set dataset"):
        find_experiment(out, "scratch", "fmow")
    with pytest.raises(FileNotFoundError, match=r"'nope' .*Experiments with runs: scratch \(iwildcam: 1 runs\)"):
        find_experiment(out, "nope", "fmow")
