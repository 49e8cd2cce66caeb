"""Run every benchmark in benchmarks/ and print one markdown table: benchmark, ratio, target, met?

    python benchmarks/run_all.py              # full sizes (minutes to an hour on 2 CPU cores)
    python benchmarks/run_all.py --smoke      # tiny sizes: checks they all run (about a minute)
    python benchmarks/run_all.py --only bench_augment bench_text_trim

Each script runs in its own process (as a user would run it) from the repository root, so their
synthetic data lands under outputs/bench/ and is written once. A row comes from each line a script
prints as `RATIO <name>: <x>x` or `TARGET <name>: <value> (target ...): met | NOT MET | n/a (smoke)`.
The targets of the ratios are below (docs/scale.md's table). The CPU (or GPU) is named at the top;
smoke sizes say nothing about speed, so no target is judged then. Exits 1 when a script failed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (script, ratio name) -> the smallest ratio that meets the target
TARGETS = {("bench_cache_grid", "decode work"): 8.0, ("bench_cache_grid", "disk"): 8.0,
           ("bench_jpeg_draft", "jpeg_draft"): 2.5, ("bench_augment", "augment"): 10.0,
           ("bench_text_trim", "text_trim"): 4.0, ("bench_token_rows", "token_rows fmow"): 1.5,
           ("bench_token_rows", "token_rows iwildcam"): 1.2}
RATIO = re.compile(r"^RATIO (?P<name>[^:]+): (?P<value>[\d.]+)x(?P<rest>.*)$")
TARGET = re.compile(r"^TARGET (?P<name>[^:]+): (?P<value>.+?) \(target (?P<target>[^)]*)\): (?P<met>.+)$")


def benchmark_scripts() -> list[Path]:
    """Every benchmark: each .py file here except helpers (`_*.py`) and this runner."""
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")


def rows_of(script: str, output: str, smoke: bool) -> list[dict]:
    """The table rows in one script's output."""
    rows = []
    for line in output.splitlines():
        if m := RATIO.match(line.strip()):
            value = float(m["value"])
            target = TARGETS.get((script, m["name"]))
            met = "" if target is None else "n/a (smoke)" if smoke else ("met" if value >= target else "NOT MET")
            rows.append({"benchmark": script, "what": m["name"], "value": f"{value:g}x",
                         "target": f">= {target:g}x" if target else "", "met": met})
        elif m := TARGET.match(line.strip()):
            rows.append({"benchmark": script, "what": m["name"], "value": m["value"], "target": m["target"],
                         "met": m["met"]})
    return rows


def device_line() -> str:
    from _common import cpu_name
    line = f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"
    try:
        import torch
        if torch.cuda.is_available():
            line += f"; GPU: {torch.cuda.get_device_name()} x {torch.cuda.device_count()}"
        line += f"; torch {torch.__version__}"
    except ImportError:
        pass
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: every script in seconds")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these scripts only (name without .py)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds a script may take")
    ap.add_argument("--workdir", type=Path, default=HERE.parent, help="where the scripts run (their outputs/bench/ "
                    "goes there); default the repository root")
    args = ap.parse_args(argv)
    scripts = benchmark_scripts()
    if args.only:
        unknown = set(args.only) - {p.stem for p in scripts}
        if unknown:
            ap.error(f"--only {sorted(unknown)}: no such benchmark; there are {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in args.only]
    root = HERE.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # shared cores thrash with more
    head = device_line()
    print(head, flush=True)
    rows, failed, started_all = [], [], time.perf_counter()
    for script in scripts:
        started = time.perf_counter()
        cmd = [sys.executable, str(script)] + (["--smoke"] if args.smoke else [])
        try:
            done = subprocess.run(cmd, cwd=args.workdir, env=env, capture_output=True, text=True, timeout=args.timeout)
            output, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as e:
            output, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
        seconds = time.perf_counter() - started
        found = rows_of(script.stem, output, args.smoke)
        for row in found:
            row["seconds"] = f"{seconds:.1f}"
        if rc != 0:
            failed.append(script.stem)
            print(output[-3000:], file=sys.stderr)
            found.append({"benchmark": script.stem, "what": "", "value": f"FAILED (exit {rc})", "target": "",
                          "met": "", "seconds": f"{seconds:.1f}"})
        elif not found:
            found.append({"benchmark": script.stem, "what": "", "value": "ran (no RATIO line)", "target": "",
                          "met": "", "seconds": f"{seconds:.1f}"})
        rows += found
        print(f"{script.name}: {'ok' if rc == 0 else 'FAILED'} in {seconds:.1f} s", flush=True)
    total = time.perf_counter() - started_all
    print(f"\n{head}; {'--smoke (tiny sizes: no target is judged)' if args.smoke else 'full sizes'}; "
          f"{len(scripts)} scripts in {total:.0f} s\n")
    print("| benchmark | ratio | value | target | met? | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['benchmark']}` | {r['what']} | {r['value']} | {r['target']} | {r['met']} | {r['seconds']} |")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
