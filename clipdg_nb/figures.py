"""The study's figures as plotly objects (content only; `plots.show` displays them in notebooks and
reports, and `plots` re-exports every function here).

Conventions that keep them honest and readable:
- one metric per y axis: ID and OOD headline metrics differ on FMoW (acc_avg, acc_worst_region),
  so figures over splits put them in separate panels whose axis names the metric;
- train fractions on a log axis labelled with the fractions present, as percent (3 %, 10 %, 100 %);
- series that share an x are dodged a little so their intervals do not hide each other (hover
  shows the true fraction);
- groups (regions, years, camera locations) in natural order (location 2 before 10), one panel and
  x axis per group field, one colour per split in every panel and a single legend;
- bar labels short (two decimals) and hidden where they do not fit.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .datasets import SPLIT_TITLES, SPLITS

SPLIT_ORDER = list(SPLITS)
SPLIT_COLORS = {"train": "#9d9d9d", "id_val": "#9ecae9", "id_test": "#4c78a8", "val": "#ffbf79", "test": "#e45756"}
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac")
VARIANT_TITLES = {"best": "best epoch", "last": "last epoch", "swa": "SWA", "ema": "EMA", "zeroshot": "zero-shot",
                  "selected": "selected"}
_WISE = re.compile(r"^wise_ft_(?P<alpha>[0-9.]+)$")
DODGE_DECADES = 0.018  # horizontal offset between series sharing a fraction, in decades of the log axis


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _require(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {missing}; it has {list(df.columns)}")


def _error_bars(frame: pd.DataFrame, center: str = "mean") -> dict | None:
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

    `table`: long rows with split, field, group, value (and n): `evaluate.group_accuracy`.
    """
    _require(table, ["split", "field", "group", "value"], "group_bars")
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
    _require(summary, ["fraction", "mean", color], "metric_vs_fraction")
    fig = go.Figure()
    groups = list(summary.sort_values("fraction").groupby(color, sort=False))
    for i, (name, sub) in enumerate(groups):
        n = sub["n"].to_numpy() if "n" in sub.columns else None
        fig.add_scatter(x=dodge(sub["fraction"], i, len(groups)), y=sub["mean"], mode="lines+markers", name=str(name),
                        error_y=_error_bars(sub), text=[percent(f) for f in sub["fraction"]], customdata=n,
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
    _require(table, ["fraction", "mean_diff", "low", "high"], "paired_gain")
    fig = go.Figure()
    groups = list(table.groupby("comparison", sort=False)) if "comparison" in table.columns else [("gain", table)]
    for i, (name, sub) in enumerate(groups):
        sub = sub.sort_values("fraction")
        fig.add_scatter(x=dodge(sub["fraction"], i, len(groups)), y=sub["mean_diff"], mode="markers+lines",
                        name=str(name), error_y=_error_bars(sub, "mean_diff"),
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
    _require(points, ["method", "id", "ood"], "id_vs_ood")
    fig = go.Figure()
    for method, sub in points.groupby("method", sort=False):
        text = [f"fraction {percent(f)}" for f in sub["fraction"]] if "fraction" in sub.columns else None
        fig.add_scatter(x=sub["id"], y=sub["ood"], mode="markers", name=str(method), text=text,
                        hovertemplate="ID %{x:.3f}, OOD %{y:.3f}<br>%{text}<extra>" + str(method) + "</extra>")
    lo = float(np.nanmin([points["id"].min(), points["ood"].min(), 0.0]))
    hi = float(np.nanmax([points["id"].max(), points["ood"].max(), 1e-3]))
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(color="grey", dash="dot"))
    if fit is not None:
        from .analysis import logit, sigmoid
        xs = np.linspace(max(lo, 1e-3), min(hi, 1 - 1e-3), 50)
        ys = sigmoid(fit["slope"] * logit(xs) + fit["intercept"])
        fig.add_scatter(x=xs, y=ys, mode="lines", name=fit.get("label", "baseline trend"),
                        line=dict(color="black", dash="dash"))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, height=480)
    return fig


def worst_groups_bar(table: pd.DataFrame, title: str = "Worst groups", xaxis_title: str = "accuracy") -> go.Figure:
    """Horizontal bars of per-group values (columns group, value; optionally method), worst first."""
    _require(table, ["group", "value"], "worst_groups_bar")
    fig = go.Figure()
    color = "method" if "method" in table.columns else None
    for name, sub in (table.groupby(color, sort=False) if color else [("", table)]):
        fig.add_bar(y=sub["group"].astype(str), x=sub["value"], orientation="h", name=str(name),
                    texttemplate="%{x:.2f}", textposition="outside", cliponaxis=False)
    fig.update_layout(title=title, barmode="group", xaxis_title=xaxis_title, height=max(300, 28 * len(table)),
                      uniformtext=dict(minsize=9, mode="hide"))
    fig.update_yaxes(autorange="reversed", type="category")
    return fig
