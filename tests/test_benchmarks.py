"""Benchmarks never rot: every script in benchmarks/ runs in smoke mode (tiny sizes, seconds) here.

The scripts are found by glob, so a new benchmark is covered without touching this file. They run
as a user runs them (a subprocess, the repository on PYTHONPATH, one thread each), two at a time on
a 2-core machine, all in one working folder: the three that read the same real-profile synthetic
data (outputs/bench/smoke/real) run one after the other, so it is written once and never by two."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")
SHARED_DATA = ("bench_cache_grid", "bench_real_scale", "gpu_check")  # in this order, in one chain
TIMEOUT_S = 600  # seconds each; ~5-15 s on an idle 2-core machine, far more when others share the cores
sys.path.insert(0, str(BENCH))
import run_all  # noqa: E402


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _run(script: Path, cwd: Path) -> tuple[int, str, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        return done.returncode, done.stdout + done.stderr, time.perf_counter() - started
    except subprocess.TimeoutExpired as e:
        return -1, f"timed out after {TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}", TIMEOUT_S


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory):
    """Every selected script's (exit code, output, seconds), run two at a time."""
    wanted = {item.callspec.params["script"].stem for item in request.session.items
              if item.originalname == "test_benchmark_runs_in_smoke_mode"}
    cwd = tmp_path_factory.mktemp("bench")
    by_name = {p.stem: p for p in SCRIPTS if p.stem in wanted}
    chain = [by_name.pop(n) for n in SHARED_DATA if n in by_name]
    results = {}

    def run_chain(scripts):
        for script in scripts:
            results[script.stem] = _run(script, cwd)
    with ThreadPoolExecutor(max_workers=max(1, min(2, len(os.sched_getaffinity(0))))) as pool:
        jobs = [pool.submit(run_chain, chain)] + [pool.submit(run_chain, [p]) for p in by_name.values()]
        for job in jobs:
            job.result()
    return results


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_runs_in_smoke_mode(script, smoke_runs):
    rc, output, seconds = smoke_runs[script.stem]
    assert rc == 0, f"{script.name} --smoke failed (exit {rc}) after {seconds:.0f} s:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    if script.stem == "gpu_check":
        assert "| measurement | value | notes | target | met? |" in output
        assert "FAILED" not in output


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
