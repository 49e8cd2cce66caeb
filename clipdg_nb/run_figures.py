"""Figures of one run (plotly objects; `plots` re-exports them): learning curves, its weight
variants per split (one metric per panel), and the WiSE-FT ID-vs-OOD curve as wise-ft plots it."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .datasets import ID_SPLITS
from .figures import PALETTE, SPLIT_ORDER, _require, _series_colors, split_title, variant_title, wise_alpha


def learning_curves(history: Sequence[dict], metrics: Sequence[str] | None = None,
                    title: str = "Learning curves") -> go.Figure:
    """Training loss and the selection split's metrics per epoch (a run record's `history`)."""
    if not history:
        raise ValueError("learning_curves: the history is empty (probe methods train no epochs)")
    df = pd.DataFrame(list(history))
    _require(df, ["epoch", "train_loss"], "learning_curves")
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
    _require(table, ["variant", "split", "value"], "variant_bars")
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
    _require(variants, ["variant", "split", "value"], "wise_ft_points")
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
