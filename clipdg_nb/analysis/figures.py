"""The study's figures as plotly objects (content only; `plots.show` displays them, and `plots`
re-exports every function here).

Conventions: one metric per y axis (ID and OOD headline metrics differ on FMoW, so splits get
separate panels); train fractions on a log axis labelled in percent; series sharing an x dodged so
their intervals stay visible (hover shows the true fraction); groups in natural order, one panel per
group field, one colour per split and a single legend; short bar labels, hidden where they do not fit.
"""
from __future__ import annotations

import math
from typing import Sequence
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data import ID_SPLITS, SPLIT_TITLES, SPLITS

SPLIT_ORDER = list(SPLITS)
SPLIT_COLORS = {"train": "#9d9d9d", "id_val": "#9ecae9", "id_test": "#4c78a8", "val": "#ffbf79", "test": "#e45756"}
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac")
VARIANT_TITLES = {"best": "best epoch", "last": "last epoch", "swa": "SWA", "ema": "EMA", "zeroshot": "zero-shot",
                  "selected": "selected", "uniform_soup": "uniform soup", "greedy_soup": "greedy soup"}
_WISE = re.compile(r"^wise_ft_(?P<alpha>[0-9.]+)$")
DODGE_DECADES = 0.018  # horizontal offset between series sharing a fraction, in decades of the log axis


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def require_columns(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {missing}; it has {list(df.columns)}")


def error_bars(frame: pd.DataFrame, center: str = "mean") -> dict | None:
    """Asymmetric error bars from center/low/high (none where the interval is undefined)."""
    if not {"low", "high"} <= set(frame.columns) or frame[["low", "high"]].isna().all().all():
        return None
    return dict(type="data", symmetric=False, array=(frame["high"] - frame[center]).fillna(0).to_numpy(),
                arrayminus=(frame[center] - frame["low"]).fillna(0).to_numpy())


def split_title(split: str) -> str:
    return SPLIT_TITLES.get(split, split)


def variant_title(name: str) -> str:
    """A weight variant as people say it: 'last' -> 'last epoch', 'swa' -> 'SWA', 'wise_ft_0.5' ->
    'WiSE-FT α=0.5'; other names (e.g. 'finetune lr=0.001') unchanged."""
    name = str(name)
    match = _WISE.match(name)
    if match:
        return f"WiSE-FT α={float(match['alpha']):g}"
    return VARIANT_TITLES.get(name, name)


def wise_alpha(name: str) -> float | None:
    """The mixing weight of a 'wise_ft_<alpha>' variant, else None."""
    match = _WISE.match(str(name))
    return float(match["alpha"]) if match else None


def natural_order(values) -> list[str]:
    """Distinct values as text, numbers in numeric order (location 2 before 10), names alphabetically."""
    distinct = list(dict.fromkeys(str(v) for v in values))
    numeric = pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce")
    if len(distinct) and numeric.notna().all():
        return [v for _, v in sorted(zip(numeric, distinct))]
    return sorted(distinct)


def percent(fraction: float) -> str:
    """0.03 -> '3%', 0.5 -> '50%', 0.005 -> '0.5%'."""
    return f"{round(float(fraction) * 100, 6):g}%"


def fraction_ticks(fractions, min_gap: float = 0.06) -> tuple[list[float], list[str]]:
    """Tick positions (every fraction present) and labels (percent) for a log fraction axis; a label
    closer than `min_gap` of the axis span (in decades) to one already kept, from 100 % down, is left
    blank so labels never overlap (0.9 beside 1.0 on the paper's grid)."""
    values = sorted({float(f) for f in fractions if f is not None and np.isfinite(f) and f > 0})
    if not values:
        return [], []
    span = max(math.log10(values[-1] / values[0]), 0.3)
    kept, labels = None, {}
    for v in reversed(values):
        if kept is None or math.log10(kept / v) >= min_gap * span:
            labels[v], kept = percent(v), v
    return values, [labels.get(v, "") for v in values]


def _fraction_axis(fig: go.Figure, fractions, **kwargs) -> None:
    tickvals, ticktext = fraction_ticks(fractions)
    fig.update_xaxes(type="log", tickvals=tickvals, ticktext=ticktext, title_text="fraction of the train split",
                     **kwargs)


def dodge(fractions, index: int, count: int, decades: float = DODGE_DECADES) -> np.ndarray:
    """Fractions shifted by a small multiplicative offset for series `index` of `count` (log x)."""
    offset = (index - (count - 1) / 2) * decades
    return np.asarray(fractions, dtype=float) * 10 ** offset


def _series_colors(names) -> dict:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

def group_bars(table: pd.DataFrame, title: str = "Accuracy per group", yaxis_title: str = "accuracy") -> go.Figure:
    """Per-group accuracy: one panel (with its own x axis) per metadata field, groups in natural
    order, one colour per split in every panel, one legend.

    `table`: long rows with split, field, group, value (and n): `tables.group_accuracy`.
    """
    require_columns(table, ["split", "field", "group", "value"], "group_bars")
    fields = list(dict.fromkeys(table["field"]))
    if not fields:
        raise ValueError("group_bars: the table is empty")
    splits = [s for s in SPLIT_ORDER if s in set(table["split"])]
    splits += sorted(set(table["split"]) - set(splits))
    rows = len(fields)
    fig = make_subplots(rows=rows, cols=1, subplot_titles=[f"{yaxis_title} per {f}" for f in fields],
                        vertical_spacing=min(0.3, 0.4 / rows) if rows > 1 else 0.0)
    in_legend = set()
    for row, fld in enumerate(fields, start=1):
        part = table[table["field"] == fld]
        order = natural_order(part["group"])
        for split in splits:
            sub = part[part["split"] == split]
            if sub.empty:
                continue
            name = split_title(split) or "all"
            n = sub["n"].to_numpy() if "n" in sub.columns else None
            fig.add_bar(x=sub["group"].astype(str), y=sub["value"], name=name, legendgroup=split,
                        showlegend=split not in in_legend, marker_color=SPLIT_COLORS.get(split), customdata=n,
                        row=row, col=1,
                        hovertemplate=f"{fld} %{{x}}: %{{y:.3f}}" + (" (n=%{customdata})" if n is not None else "")
                        + f"<extra>{name}</extra>")
            in_legend.add(split)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, title_text=fld,
                         row=row, col=1)
        fig.update_yaxes(title_text=yaxis_title, range=[0, 1], row=row, col=1)
    fig.update_layout(title=title, barmode="group", height=130 + 270 * rows, bargap=0.2,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0 + 0.12 / rows, x=0),
                      margin=dict(t=110))
    return fig


def metric_vs_fraction(summary: pd.DataFrame, reference: dict[str, float] | None = None, title: str = "",
                       yaxis_title: str = "metric", color: str = "method") -> go.Figure:
    """Mean and 95 % interval over seeds against the train fraction, one line per `color` value
    (dodged a little so intervals stay visible); fractions labelled in percent.

    `summary`: columns fraction, mean, low, high and `color` (stats.summarise output).
    `reference`: horizontal lines, e.g. {"zero-shot": 0.41}.
    """
    require_columns(summary, ["fraction", "mean", color], "metric_vs_fraction")
    fig = go.Figure()
    groups = list(summary.sort_values("fraction").groupby(color, sort=False))
    for i, (name, sub) in enumerate(groups):
        n = sub["n"].to_numpy() if "n" in sub.columns else None
        fig.add_scatter(x=dodge(sub["fraction"], i, len(groups)), y=sub["mean"], mode="lines+markers", name=str(name),
                        error_y=error_bars(sub), text=[percent(f) for f in sub["fraction"]], customdata=n,
                        hovertemplate="fraction %{text}: %{y:.3f}"
                        + (" (n=%{customdata} seeds)" if n is not None else "")
                        + f"<extra>{name}</extra>")
    for name, value in (reference or {}).items():
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            fig.add_hline(y=value, line_dash="dash", annotation_text=f"{name} {value:.3f}",
                          annotation_position="bottom right")
    fig.update_layout(title=title, yaxis_title=yaxis_title, height=420)
    _fraction_axis(fig, summary["fraction"])
    return fig


def paired_gain(table: pd.DataFrame, title: str = "Gain", yaxis_title: str = "difference") -> go.Figure:
    """Mean paired difference with its interval per fraction (`analysis.paired_table` output), one
    series per comparison, dodged so their intervals do not overlap; zero as a grey line."""
    require_columns(table, ["fraction", "mean_diff", "low", "high"], "paired_gain")
    fig = go.Figure()
    groups = list(table.groupby("comparison", sort=False)) if "comparison" in table.columns else [("gain", table)]
    for i, (name, sub) in enumerate(groups):
        sub = sub.sort_values("fraction")
        fig.add_scatter(x=dodge(sub["fraction"], i, len(groups)), y=sub["mean_diff"], mode="markers+lines",
                        name=str(name), error_y=error_bars(sub, "mean_diff"),
                        text=[percent(f) for f in sub["fraction"]],
                        hovertemplate="fraction %{text}: %{y:+.4f}<extra>" + str(name) + "</extra>")
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(title=title, yaxis_title=yaxis_title, height=400)
    _fraction_axis(fig, table["fraction"])
    return fig


def id_vs_ood(points: pd.DataFrame, fit: dict | None = None, title: str = "OOD against ID",
              xaxis_title: str = "ID metric", yaxis_title: str = "OOD metric") -> go.Figure:
    """Effective-robustness scatter: one marker per run (colour = method), the y = x line and,
    if given, the baseline trend `fit` ({"slope", "intercept", "label"}, in logit space).
    Name each axis's split and metric (e.g. 'ID test: acc_avg')."""
    require_columns(points, ["method", "id", "ood"], "id_vs_ood")
    fig = go.Figure()
    for method, sub in points.groupby("method", sort=False):
        text = [f"fraction {percent(f)}" for f in sub["fraction"]] if "fraction" in sub.columns else None
        fig.add_scatter(x=sub["id"], y=sub["ood"], mode="markers", name=str(method), text=text,
                        hovertemplate="ID %{x:.3f}, OOD %{y:.3f}<br>%{text}<extra>" + str(method) + "</extra>")
    lo = float(np.nanmin([points["id"].min(), points["ood"].min(), 0.0]))
    hi = float(np.nanmax([points["id"].max(), points["ood"].max(), 1e-3]))
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(color="grey", dash="dot"))
    if fit is not None:
        from .stats import logit, sigmoid
        xs = np.linspace(max(lo, 1e-3), min(hi, 1 - 1e-3), 50)
        ys = sigmoid(fit["slope"] * logit(xs) + fit["intercept"])
        fig.add_scatter(x=xs, y=ys, mode="lines", name=fit.get("label", "baseline trend"),
                        line=dict(color="black", dash="dash"))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, height=480)
    return fig


def worst_groups_bar(table: pd.DataFrame, title: str = "Worst groups", xaxis_title: str = "accuracy") -> go.Figure:
    """Horizontal bars of per-group values (columns group, value; optionally method), worst first."""
    require_columns(table, ["group", "value"], "worst_groups_bar")
    fig = go.Figure()
    color = "method" if "method" in table.columns else None
    for name, sub in (table.groupby(color, sort=False) if color else [("", table)]):
        fig.add_bar(y=sub["group"].astype(str), x=sub["value"], orientation="h", name=str(name),
                    texttemplate="%{x:.2f}", textposition="outside", cliponaxis=False)
    fig.update_layout(title=title, barmode="group", xaxis_title=xaxis_title, height=max(300, 28 * len(table)),
                      uniformtext=dict(minsize=9, mode="hide"))
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


# ---------------------------------------------------------------------------------------------
# Figures of one run: learning curves, its weight variants per split, the WiSE-FT ID-vs-OOD curve
# ---------------------------------------------------------------------------------------------


def learning_curves(history: Sequence[dict], metrics: Sequence[str] | None = None,
                    title: str = "Learning curves") -> go.Figure:
    """Training loss and the selection split's metrics per epoch (a run record's `history`)."""
    if not history:
        raise ValueError("learning_curves: the history is empty (probe methods train no epochs)")
    df = pd.DataFrame(list(history))
    require_columns(df, ["epoch", "train_loss"], "learning_curves")
    if metrics is None:  # headline-style metrics only: averages and worst groups, not every group
        metrics = [c for c in df.columns if "/" in c and (c.endswith("_avg") or "worst" in c or "macro" in c)]
    split = metrics[0].split("/", 1)[0] if metrics else "selection split"
    fig = make_subplots(rows=1, cols=2, subplot_titles=["train loss", f"{split_title(split)} (selection split)"])
    fig.add_scatter(x=df["epoch"], y=df["train_loss"], mode="lines+markers", name="train loss", row=1, col=1)
    for m in metrics:
        fig.add_scatter(x=df["epoch"], y=df[m], mode="lines+markers", name=m, row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title, height=380)
    return fig


def learning_curves_by_run(histories: dict[str, Sequence[dict]], metric: str, title: str | None = None) -> go.Figure:
    """One line per run (e.g. per method and lr) of one history metric against epoch."""
    fig = go.Figure()
    for name, history in histories.items():
        df = pd.DataFrame(list(history))
        if metric in df.columns:
            fig.add_scatter(x=df["epoch"], y=df[metric], mode="lines+markers", name=name)
    fig.update_layout(title=title or metric, xaxis_title="epoch", yaxis_title=metric, height=400)
    return fig


def _panels(table: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(domain, metric, splits) per panel: ID splits and OOD splits apart, one metric each."""
    metrics = table["metric"] if "metric" in table.columns else pd.Series(["value"] * len(table), index=table.index)
    panels: dict = {}
    for split in natural_split_order(table["split"]):
        domain = "ID" if split in ID_SPLITS else "OOD"
        for metric in dict.fromkeys(metrics[table["split"] == split]):
            panels.setdefault((domain, metric), []).append(split)
    return [(d, m, s) for (d, m), s in panels.items()]


def natural_split_order(splits) -> list[str]:
    present = list(dict.fromkeys(splits))
    return [s for s in SPLIT_ORDER if s in present] + [s for s in present if s not in SPLIT_ORDER]


def variant_bars(table: pd.DataFrame, title: str = "Weight variants of one run") -> go.Figure:
    """Grouped bars per split, one bar per variant (best, last, swa, ema, wise_ft_*, or 'method lr=..'),
    in panels that each hold one metric: ID splits and OOD splits apart, the metric in the axis title.

    `table`: columns variant, split, value and metric (`tables.variant_table`, `tables.metrics_long`).
    """
    require_columns(table, ["variant", "split", "value"], "variant_bars")
    panels = _panels(table)
    colors = _series_colors(table["variant"])
    fig = make_subplots(rows=1, cols=len(panels), column_widths=[len(s) for _, _, s in panels],
                        subplot_titles=[f"{d}: {m}" for d, m, _ in panels], horizontal_spacing=0.08)
    metrics = table["metric"] if "metric" in table.columns else pd.Series(["value"] * len(table), index=table.index)
    top = float(np.nanmax(table["value"].to_numpy(dtype=float))) if len(table) else 1.0
    in_legend = set()
    for col, (domain, metric, splits) in enumerate(panels, start=1):
        part = table[table["split"].isin(splits) & (metrics == metric)]
        for variant in colors:
            sub = part[part["variant"] == variant]
            if sub.empty:
                continue
            name = variant_title(variant)
            fig.add_bar(x=[split_title(s) for s in sub["split"]], y=sub["value"], name=name, legendgroup=name,
                        showlegend=variant not in in_legend, marker_color=colors[variant], texttemplate="%{y:.2f}",
                        textposition="outside",
                        cliponaxis=False, hovertemplate=f"%{{x}}: %{{y:.4f}}<extra>{name}</extra>", row=1, col=col)
            in_legend.add(variant)
        fig.update_xaxes(type="category", categoryorder="array",
                         categoryarray=[split_title(s) for s in splits], row=1, col=col)
        fig.update_yaxes(title_text=metric, rangemode="tozero", range=[0, max(top, 1e-6) * 1.15], row=1, col=col)
    fig.update_layout(title=title, barmode="group", height=440, uniformtext=dict(minsize=9, mode="hide"),
                      legend=dict(orientation="h", yanchor="top", y=-0.12, x=0))
    return fig


def wise_ft_points(variants: pd.DataFrame, id_split: str | None = None, ood_split: str | None = None) -> pd.DataFrame:
    """ID and OOD value of every variant of a run: columns variant, alpha (WiSE-FT mixing weight:
    wise_ft_<a>; 'last' is alpha 1 when no wise_ft_1 was evaluated), id, ood, id_metric, ood_metric."""
    require_columns(variants, ["variant", "split", "value"], "wise_ft_points")
    have = set(variants["split"])
    id_split = id_split or next((s for s in ("id_test", "id_val") if s in have), None)
    ood_split = ood_split or next((s for s in ("test", "val") if s in have), None)
    if id_split not in have or ood_split not in have:
        raise ValueError(f"wise_ft_points: need an ID and an OOD split; the table has {sorted(have)}")
    metric = variants["metric"] if "metric" in variants.columns else pd.Series("value", index=variants.index)
    rows = []
    for variant, sub in variants.groupby("variant", sort=False):
        a, b = sub[sub["split"] == id_split], sub[sub["split"] == ood_split]
        if a.empty or b.empty:
            continue
        rows.append({"variant": variant, "alpha": wise_alpha(variant), "id": float(a["value"].iloc[0]),
                     "ood": float(b["value"].iloc[0]), "id_metric": metric[a.index[0]],
                     "ood_metric": metric[b.index[0]], "id_split": id_split, "ood_split": ood_split})
    points = pd.DataFrame(rows)
    if not points.empty and 1.0 not in set(points["alpha"].dropna()) and "last" in set(points["variant"]):
        points.loc[points["variant"] == "last", "alpha"] = 1.0  # WiSE-FT's alpha 1 is the last epoch's weights
    return points


def wise_ft_curve(variants: pd.DataFrame, id_split: str | None = None, ood_split: str | None = None,
                  title: str = "WiSE-FT: OOD against ID along the interpolation") -> go.Figure:
    """The WiSE-FT curve as the WiSE-FT paper draws it: x = ID metric, y = OOD metric, one point per
    mixing weight alpha from the zero-shot weights (alpha 0, when evaluated) to the fine-tuned ones
    (alpha 1 = the last epoch), and the run's other variants (best epoch, SWA, EMA) as markers.

    `variants`: a run's variant table (`tables.variant_table(record)`).
    """
    points = wise_ft_points(variants, id_split, ood_split)
    curve = points.dropna(subset=["alpha"]).sort_values("alpha")
    if not any(wise_alpha(v) is not None for v in points.get("variant", [])):
        raise ValueError("wise_ft_curve: the run has no wise_ft_<alpha> variants (set wise_alphas)")
    first = points.iloc[0]
    fig = go.Figure()
    fig.add_scatter(x=curve["id"], y=curve["ood"], mode="lines+markers+text", name="WiSE-FT, α = 0 … 1",
                    text=[f"α={a:g}" for a in curve["alpha"]], textposition="top left",
                    line=dict(color="#4c78a8"), marker=dict(size=9, color=curve["alpha"], colorscale="Blues",
                                                            cmin=-0.3, cmax=1, line=dict(width=1, color="#333")),
                    hovertemplate="%{text}: ID %{x:.4f}, OOD %{y:.4f}<extra></extra>")
    others = points[points["alpha"].isna() | (points["variant"] == "last")]
    symbols = ("diamond", "square", "triangle-up", "x", "star", "cross")
    for i, row in enumerate(others.itertuples(index=False)):
        name = variant_title(row.variant)
        fig.add_scatter(x=[row.id], y=[row.ood], mode="markers", name=name,
                        marker=dict(size=12, symbol=symbols[i % len(symbols)], color=PALETTE[(i + 1) % len(PALETTE)]),
                        hovertemplate=f"{name}: ID %{{x:.4f}}, OOD %{{y:.4f}}<extra></extra>")
    if 0.0 not in set(curve["alpha"]):
        fig.add_annotation(text="α = 0 (zero-shot) not evaluated: add 0.0 to wise_alphas", xref="paper", yref="paper",
                           x=0, y=-0.2, showarrow=False, font=dict(size=11, color="#666"), xanchor="left")
    fig.update_layout(title=title, height=480,
                      xaxis_title=f"{split_title(first['id_split'])}: {first['id_metric']}",
                      yaxis_title=f"{split_title(first['ood_split'])}: {first['ood_metric']}")
    return fig


# ---------------------------------------------------------------------------------------------
# An experiment
# ---------------------------------------------------------------------------------------------


def reliability_diagram(bins_by_model: dict[str, pd.DataFrame], title: str = "Reliability") -> go.Figure:
    """Reliability diagram(s): per confidence bin, accuracy against mean confidence (top; the
    diagonal is perfect calibration) and the number of predictions in the bin (bottom), one series
    per model. `bins_by_model`: {name: `analysis.weight_averaging.reliability_bins(...)`}."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06)
    for i, (name, bins) in enumerate(bins_by_model.items()):
        require_columns(bins, ["low", "high", "count", "confidence", "accuracy"], "reliability_diagram")
        color = PALETTE[i % len(PALETTE)]
        filled = bins[bins["count"] > 0]
        fig.add_scatter(x=filled["confidence"], y=filled["accuracy"], mode="markers+lines", name=str(name),
                        legendgroup=str(name), marker=dict(color=color), line=dict(color=color),
                        customdata=filled[["low", "high", "count"]].to_numpy(),
                        hovertemplate="bin (%{customdata[0]:.2f}, %{customdata[1]:.2f}]: confidence %{x:.3f}, "
                                      "accuracy %{y:.3f}, n=%{customdata[2]}<extra>" + str(name) + "</extra>",
                        row=1, col=1)
        fig.add_bar(x=(bins["low"] + bins["high"]) / 2, y=bins["count"], width=(bins["high"] - bins["low"]) / max(1, len(bins_by_model)),
                    offset=(-0.5 + i / max(1, len(bins_by_model))) * float((bins["high"] - bins["low"]).iloc[0]),
                    name=str(name), legendgroup=str(name), showlegend=False, marker_color=color, row=2, col=1)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(color="grey", dash="dot"),
                    row=1, col=1)
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(range=[0, 1], title_text="confidence (top-1 probability)", row=2, col=1)
    fig.update_yaxes(range=[0, 1], title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="predictions", row=2, col=1)
    fig.update_layout(title=title, height=520)
    return fig


def averaging_gains(comparison: pd.DataFrame, title: str = "Weight averaging against the best single run") -> go.Figure:
    """Each weight-averaging variant minus the best single run, paired by seed, with its interval
    (`analysis.weight_averaging.averaging_comparison`): one panel per split (and effective
    robustness), the variants along x; zero as a grey line."""
    require_columns(comparison, ["variant", "split", "metric", "diff", "diff_low", "diff_high"], "averaging_gains")
    rows = comparison.dropna(subset=["diff"])
    panels = list(dict.fromkeys(rows["split"]))
    fig = make_subplots(rows=1, cols=max(1, len(panels)), shared_yaxes=False,
                        subplot_titles=[f"{split_title(s)}: {rows[rows['split'] == s]['metric'].iloc[0]}" if s in SPLITS
                                        else f"effective robustness ({rows[rows['split'] == s]['metric'].iloc[0]})"
                                        for s in panels])
    for col, split in enumerate(panels, start=1):
        sub = rows[rows["split"] == split]
        for i, (fraction, part) in enumerate(sub.groupby("fraction", sort=True)):
            fig.add_scatter(x=[variant_title(v) for v in part["variant"]], y=part["diff"], mode="markers",
                            name=f"fraction {percent(fraction)}", legendgroup=str(fraction), showlegend=col == 1,
                            marker=dict(color=PALETTE[i % len(PALETTE)], size=9),
                            error_y=error_bars(part[["diff", "diff_low", "diff_high"]].set_axis(["diff", "low", "high"], axis=1), "diff"),
                            hovertemplate="%{x}: %{y:+.4f}<extra>fraction " + percent(fraction) + "</extra>",
                            row=1, col=col)
        fig.add_hline(y=0, line_color="grey", row=1, col=col)
    fig.update_yaxes(title_text="difference to the best single run (paired by seed)", row=1, col=1)
    fig.update_layout(title=title, height=440)
    return fig
