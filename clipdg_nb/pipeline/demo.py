"""`make demo` / `clipdg demo`: the whole study offline, on synthetic data and a tiny pretrained CLIP.

synthetic WILDS-format data -> miniature pretraining (cached) -> the demo experiment's sweep with
papermill -> HTML reports -> the headline numbers printed. A second run with nothing changed skips
everything (data, pretraining and finished points are reused).
"""
from __future__ import annotations

import time
from pathlib import Path

DEMO_EXPERIMENT = Path("parameters") / "demo.yaml"


def run_demo(root: str = "outputs/data", cache_dir: str = "outputs/cache", experiment: str | Path = DEMO_EXPERIMENT,
             jobs: int = 2, progress: bool = True, log=print) -> int:
    from .. import analysis
    from ..data import DEMO_DATASETS, format_summary, load_dataset
    from ..demo.pretrain import pretrain_tiny
    from ..demo.synthetic import SynthConfig, write_synthetic
    from .experiment import load_experiment
    from .report import render_reports
    from .runner import run_experiment

    started, timings = time.perf_counter(), {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    t = time.perf_counter()
    write_synthetic(root, cfg=SynthConfig())
    for name in DEMO_DATASETS:
        log(format_summary(name, load_dataset(name, root)) + "\n")
    t = lap("synthetic data", t)
    pretrained = pretrain_tiny(cache_dir, log=log)
    log(f"tiny CLIP: {pretrained.clip}\nvision-only tower: {pretrained.vision}")
    t = lap("pretraining", t)
    plan = load_experiment(experiment)
    summary = run_experiment(plan, jobs=jobs, progress=progress)
    log(summary.format())
    t = lap("sweep", t)
    reports = render_reports(out_dir="outputs/reports", experiment=plan.name, only_changed=True)
    t = lap("reports", t)
    if (Path("outputs/runs") / plan.name).is_dir():  # the findings the report's summary opens on
        log("\nwhat the demo shows (synthetic data, tiny model: not the paper's numbers)")
        for name in DEMO_DATASETS:
            runs = analysis.load_experiment_runs("outputs/runs", plan.name, name)
            found = analysis.findings(analysis.apply_selection(runs, analysis.select_lr(runs, "id_val")), name)
            log(f"{name}:\n" + found[["question", "measured", "verdict"]].to_string(index=False))
        log("the number tables of README.md and docs/ from these records: make readme-numbers")
    total = round(time.perf_counter() - started, 1)
    log(f"\nreports ({len(reports)}): {Path('outputs/reports').resolve()}/index.html")
    log("wall time (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + f"; total {total}")
    return 1 if summary.failed else 0
