"""Does pre-training corpus coverage drive CLIP's robustness? The analysis of a coverage ablation.

`clipdg pretrain-tiny --coverage C` names only a share C of the target concepts in the captions
(`demo/pretrain.py`). A run's coverage is read from its weights' pretraining folder (`meta.json`).
Per coverage, CLIP minus vision-only on the OOD split, paired by seed, with its interval
(`gap_by_coverage`), and its figure (`gap_vs_coverage`).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .. import paths, runs
from .. import analysis
from ..paths import resolve

GAP_COLUMNS = ["dataset", "fraction", "coverage", "mean_gap", "low", "high", "n", "clip", "vision"]
_FOLDER = re.compile(r"coverage-(?P<c>[0-9.]+)")


def coverage_of(pretrained) -> float | None:
    """The caption coverage of the pretraining a weights file came from: `meta.json` beside it (a
    tiny pretraining's; 1.0 when it predates coverage), else a `coverage-C` folder in the path, else
    None (weights not from `clipdg pretrain-tiny`, e.g. 'openai')."""
    if not pretrained:
        return None
    path = resolve(str(pretrained))
    meta = path.parent / "meta.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            data = {}
        if "config" in data:
            return float(data.get("coverage", data["config"].get("coverage", 1.0)))
    match = _FOLDER.search(str(pretrained))
    return float(match["c"]) if match else None


def _meta(pretrained) -> dict:
    path = resolve(str(pretrained)).parent / "meta.json" if pretrained else None
    try:
        return json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def accuracy_by_naming(output_dir, experiment: str, dataset: str, reference: float | None = None,
                       splits=("id_test", "test")) -> pd.DataFrame:
    """Accuracy on the classes the `reference` coverage's captions named and on those it left out,
    per (coverage, method, fraction, split), mean over seeds (from the saved predictions; the
    headline weights). `reference`: the smallest coverage above 0 in the experiment by default. Says
    whether a coverage's effect sits in the classes whose names were missing."""
    from ..data import class_names

    records = [r for r in runs.load_records(paths.experiment_dir(output_dir, experiment)) if r.get("dataset") == dataset]
    pretrained = {r["run_id"]: (r.get("params") or {}).get("pretrained") for r in records}
    covs = {k: coverage_of(v) for k, v in pretrained.items()}
    known = sorted({c for c in covs.values() if c is not None and c > 0})
    reference = reference if reference is not None else (known[0] if known else None)
    ref_meta = next((_meta(pretrained[k]) for k, c in covs.items() if c == reference), {})
    if "named_concepts" not in ref_meta:
        return pd.DataFrame(columns=["coverage", "method", "fraction", "split", "named", "accuracy", "n"])
    named = {c.split(":", 1)[1] for c in ref_meta["named_concepts"] if c.startswith(f"{dataset}:")}
    is_named = np.array([c in named for c in class_names(dataset)])
    rows = []
    for r in records:
        try:
            preds = runs.Run.of_record(r, resolve(output_dir)).predictions()
        except FileNotFoundError:  # made with save_predictions=False
            continue
        preds = preds[preds["split"].isin(splits)]
        correct = preds["y_pred"].to_numpy() == preds["y_true"].to_numpy()
        for (split, flag), ok in pd.Series(correct).groupby([preds["split"].to_numpy(), is_named[preds["y_true"].to_numpy()]]):
            rows.append({"coverage": covs[r["run_id"]], "method": r["method"], "fraction": r["fraction"], "seed": r["seed"],
                         "split": split, "named": f"named at {reference:g}" if flag else f"unnamed at {reference:g}",
                         "accuracy": float(ok.mean())})
    frame = pd.DataFrame(rows, columns=["coverage", "method", "fraction", "seed", "split", "named", "accuracy"])
    return (frame.groupby(["coverage", "method", "fraction", "split", "named"])["accuracy"]
            .agg(accuracy="mean", n="count").reset_index())


def coverage_by_run(output_dir, experiment: str) -> pd.Series:
    """run_id -> coverage of every run record of the experiment (NaN where unknown)."""
    records = runs.load_records(paths.experiment_dir(output_dir, experiment))
    values = {r["run_id"]: coverage_of((r.get("params") or {}).get("pretrained")) for r in records}
    return pd.Series(values, dtype=float, name="coverage")


def with_coverage(df: pd.DataFrame, output_dir, experiment: str) -> pd.DataFrame:
    """The tidy frame with a `coverage` column (the pretraining each run started from). Runs that
    differ only in their pretraining are told apart by that column, so their methods keep their
    plain names (`runs.merge_settings`); the functions below group by coverage first."""
    return runs.merge_settings(df).assign(coverage=df["run_id"].map(coverage_by_run(output_dir, experiment)))


def gap_by_coverage(df: pd.DataFrame, split: str = "test", clip_method: str = "finetune",
                    vision_method: str = "vision_only", select_split: str = "id_val",
                    level: float = 0.95) -> pd.DataFrame:
    """CLIP minus vision-only on `split` (each dataset's headline metric) per (dataset, fraction,
    coverage), paired by seed: mean gap, interval over seeds, n pairs, and both means. `df`: the
    tidy frame with a `coverage` column (`with_coverage`); each coverage's learning rates are chosen
    on `select_split` from its own runs."""
    if "coverage" not in df.columns:
        raise ValueError("gap_by_coverage: the frame lacks a `coverage` column; use with_coverage(df, ...)")
    parts = []
    for coverage, sub in df.dropna(subset=["coverage"]).groupby("coverage"):
        chosen = analysis.apply_selection(sub, analysis.select_lr(sub, select_split))
        gap = analysis.compare_methods(chosen, clip_method, vision_method, split, level=level)
        if gap.empty:
            continue
        rows = analysis.metric_rows(chosen, split)
        means = rows.groupby(["dataset", "method", "fraction"])["value"].mean()
        gap = gap.assign(coverage=float(coverage), mean_gap=gap["mean_diff"],
                         clip=[means.get((d, clip_method, f), np.nan) for d, f in zip(gap["dataset"], gap["fraction"])],
                         vision=[means.get((d, vision_method, f), np.nan) for d, f in zip(gap["dataset"], gap["fraction"])])
        parts.append(gap[GAP_COLUMNS])
    if not parts:
        return pd.DataFrame(columns=GAP_COLUMNS)
    return pd.concat(parts, ignore_index=True).sort_values(["dataset", "fraction", "coverage"]).reset_index(drop=True)


def gap_vs_coverage(table: pd.DataFrame, title: str = "CLIP minus vision-only against caption coverage",
                    yaxis_title: str = "OOD difference") -> go.Figure:
    """The gap of `gap_by_coverage` against coverage, one series per train fraction, with its
    interval over seeds; zero as a grey line."""
    from .figures import PALETTE, error_bars, percent

    missing = [c for c in ("coverage", "fraction", "mean_gap", "low", "high") if c not in table.columns]
    if missing:
        raise ValueError(f"gap_vs_coverage: the table lacks column(s) {missing}; pass gap_by_coverage's output")
    fig = go.Figure()
    fractions = sorted(table["fraction"].unique())
    for i, fraction in enumerate(fractions):
        sub = table[table["fraction"] == fraction].sort_values("coverage")
        name = f"fraction {percent(fraction)}"
        fig.add_scatter(x=sub["coverage"] + 0.01 * (i - (len(fractions) - 1) / 2), y=sub["mean_gap"],
                        mode="markers+lines", name=name, line_color=PALETTE[i % len(PALETTE)],
                        error_y=error_bars(sub, "mean_gap"), text=[f"{c:g}" for c in sub["coverage"]],
                        hovertemplate="coverage %{text}: %{y:+.4f}<extra>" + name + "</extra>")
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(title=title, xaxis_title="share of target concepts named in the pretraining captions",
                      yaxis_title=yaxis_title, height=400)
    fig.update_xaxes(range=[-0.05, 1.05])
    return fig
