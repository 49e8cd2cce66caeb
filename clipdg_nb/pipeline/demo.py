"""`make demo` / `clipdg demo`: the whole study offline, on synthetic data and a tiny pretrained CLIP.

synthetic WILDS-format data -> miniature pretraining (cached) -> the demo experiment's sweep with
papermill -> HTML reports -> the headline numbers printed. A second run with nothing changed skips
everything (data, pretraining and finished points are reused).
"""
from __future__ import annotations

import time
from pathlib import Path

DEMO_EXPERIMENT = Path("parameters") / "demo.yaml"
PHASES = ("synthetic data", "pretraining", "sweep", "reports")


def run_demo(root: str = "outputs/data", jobs: int = 2, progress: bool = True) -> int:
    from .. import analysis
    from ..analysis.tables import format_summary
    from ..data import DEMO_DATASETS, load_dataset
    from ..demo.pretrain import pretrain_tiny
    from ..demo.synthetic import SynthConfig, write_synthetic
    from .experiment import load_experiment
    from .report import render_reports
    from .runner import run_experiment

    ends = [time.perf_counter()]  # the end of each phase
    write_synthetic(root, cfg=SynthConfig())
    for name in DEMO_DATASETS:
        print(format_summary(name, load_dataset(name, root)) + "\n")
    ends.append(time.perf_counter())
    pretrained = pretrain_tiny("outputs/cache")
    print(f"tiny CLIP: {pretrained.clip}\nvision-only tower: {pretrained.vision}")
    ends.append(time.perf_counter())
    plan = load_experiment(DEMO_EXPERIMENT)
    summary = run_experiment(plan, jobs=jobs, progress=progress)
    print(summary.format())
    ends.append(time.perf_counter())
    reports = render_reports(out_dir="outputs/reports", experiment=plan.name, only_changed=True)
    ends.append(time.perf_counter())
    if (Path("outputs/runs") / plan.name).is_dir():  # the findings the report's summary opens on
        print("\nwhat the demo shows (synthetic data, tiny model: not the paper's numbers)")
        for name in DEMO_DATASETS:
            runs = analysis.load_experiment_runs("outputs/runs", plan.name, name)
            found = analysis.findings(analysis.apply_selection(runs, analysis.select_lr(runs, "id_val")), name)
            print(f"{name}:\n" + found[["question", "measured", "verdict"]].to_string(index=False))
        print("the number tables of README.md and docs/ from these records: make readme-numbers")
    print(f"\nreports ({len(reports)}): {Path('outputs/reports').resolve()}/index.html")
    print("wall time (s): " + ", ".join(f"{name} {b - a:.1f}" for name, a, b in zip(PHASES, ends, ends[1:]))
          + f"; total {time.perf_counter() - ends[0]:.1f}")
    return 1 if summary.failed else 0
