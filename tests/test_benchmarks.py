"""Benchmarks never rot: every script in benchmarks/ runs in smoke mode (tiny sizes, seconds) here.

The scripts are found by glob, so a new benchmark is covered without touching this file. They run
as a user runs them (a subprocess, the repository on PYTHONPATH), all in one working folder so the
synthetic data two of them share (outputs/bench/smoke/real) is written once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")
TIMEOUT_S = 600  # seconds each; ~5-15 s on an idle 2-core machine, far more when others share the cores
sys.path.insert(0, str(BENCH))
import run_all  # noqa: E402


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_runs_in_smoke_mode(script, bench_dir):
    done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=bench_dir, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script.name} --smoke failed (exit {done.returncode}):\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    if script.stem == "gpu_check":
        assert "| measurement | value | notes | target | met? |" in done.stdout
        assert "FAILED" not in done.stdout


def test_the_runner_finds_every_benchmark():
    assert run_all.benchmark_scripts() == SCRIPTS
    assert {"bench_cache_grid", "gpu_check", "bench_real_scale"} <= {p.stem for p in SCRIPTS}


def test_the_runner_reads_ratios_and_targets_and_judges_them():
    out = ("noise\nRATIO decode work: 10.7x\nRATIO disk: 7.9x\nRATIO other thing: 2.0x faster\n"
           "TARGET augment: 31,000 images/s (target >= 20,000): met\n")
    rows = run_all.rows_of("bench_cache_grid", out, smoke=False)
    assert [(r["what"], r["value"], r["target"], r["met"]) for r in rows] == [
        ("decode work", "10.7x", ">= 8x", "met"), ("disk", "7.9x", ">= 8x", "NOT MET"),
        ("other thing", "2x", "", ""), ("augment", "31,000 images/s", ">= 20,000", "met")]
    assert {r["met"] for r in run_all.rows_of("bench_cache_grid", out, smoke=True)[:2]} == {"n/a (smoke)"}


def test_the_runner_prints_one_table_naming_the_cpu(tmp_path, capsys):
    rc = run_all.main(["--smoke", "--only", "bench_augment", "--workdir", str(tmp_path), "--timeout", str(TIMEOUT_S)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "CPU: " in out and run_all.device_line().split(";")[0] in out
    assert "| benchmark | ratio | value | target | met? | s |" in out
    assert "| `bench_augment` | augment |" in out and "n/a (smoke)" in out
