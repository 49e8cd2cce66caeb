"""Plotly figures for the notebooks, and how they are displayed so that notebooks and reports keep them.

Why `show(fig)` instead of `fig.show()`: under a papermill kernel plotly >= 6 emits only the
`application/vnd.plotly.v1+json` mimetype, which nbconvert's HTML export drops, while HTML with a
script stays blank in JupyterLab until the notebook is trusted (an executed notebook reopened is
not). `show` displays one output holding both: plotly's mimetype, which the jupyterlab-plotly
extension draws without trust, and HTML (a `<div>` plus the script that draws it), which nbconvert
and `clipdg report` use. plotly.js itself (~4.8 MB) is put inline once per notebook
(`setup_notebook()`, or the first `show`) for a plain `jupyter nbconvert`; `clipdg report` strips it
and loads it once per report folder. Nothing comes from a CDN.

The failure gallery is static HTML (thumbnails as inline base64 PNG) for the same reason:
widget callbacks do not run in an exported report.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .datasets import GROUP_FIELDS, SPLIT_TITLES, SPLITS

_PLOTLYJS_SENT = False
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
SPLIT_ORDER = list(SPLITS)


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------

def plotlyjs_html() -> str:
    """A `<script>` holding plotly.js itself (no network needed to draw figures after it)."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def setup_notebook() -> None:
    """Put plotly.js inline in this cell's output; later `show(fig)` calls reuse it.

    Call it in the notebook's first code cell: re-running that cell re-sends plotly.js, so the
    figures keep working after outputs were cleared in JupyterLab.
    """
    global _PLOTLYJS_SENT
    from IPython.display import HTML, display

    display(HTML(plotlyjs_html()))
    _PLOTLYJS_SENT = True


def figure_html(fig: go.Figure, include_plotlyjs: bool = False) -> str:
    """The HTML fragment of a figure: a div + the script that draws it (plotly.js inline if asked)."""
    return fig.to_html(full_html=False, include_plotlyjs=bool(include_plotlyjs), config=PLOTLY_CONFIG)


def figure_bundle(fig: go.Figure, include_plotlyjs: bool = False) -> dict:
    """One display of a figure in two forms: plotly's mimetype (drawn by JupyterLab's plotly
    extension, trusted or not) and the HTML fragment (for nbconvert and reports)."""
    import plotly.io as pio

    spec = json.loads(pio.to_json(fig, validate=False, remove_uids=False))
    spec["config"] = dict(PLOTLY_CONFIG)
    title = (spec.get("layout") or {}).get("title") or {}
    text = title.get("text") if isinstance(title, dict) else title
    return {PLOTLY_MIME: spec, "text/html": figure_html(fig, include_plotlyjs),
            "text/plain": f"<plotly figure{': ' + str(text) if text else ''}>"}


def show(fig: go.Figure) -> None:
    """Display a figure as plotly's mimetype and HTML in one output; plotly.js goes inline (in the
    HTML form) with the first figure of a notebook unless `setup_notebook()` already sent it."""
    global _PLOTLYJS_SENT
    from IPython.display import display

    display(figure_bundle(fig, include_plotlyjs=not _PLOTLYJS_SENT), raw=True)
    _PLOTLYJS_SENT = True


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {missing}; it has {list(df.columns)}")


def _error_bars(frame: pd.DataFrame) -> dict | None:
    """Asymmetric error bars from mean/low/high (none where the interval is undefined)."""
    if not {"low", "high"} <= set(frame.columns) or frame[["low", "high"]].isna().all().all():
        return None
    return dict(type="data", symmetric=False, array=(frame["high"] - frame["mean"]).fillna(0).to_numpy(),
                arrayminus=(frame["mean"] - frame["low"]).fillna(0).to_numpy())


def split_title(split: str) -> str:
    return SPLIT_TITLES.get(split, split)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def group_bars(table: pd.DataFrame, title: str = "Accuracy per group") -> go.Figure:
    """Per-group accuracy bars, one panel per metadata field, one colour per split.

    `table`: long rows with split, field, group, value (and n): `evaluate.group_accuracy`.
    """
    _require(table, ["split", "field", "group", "value"], "group_bars")
    fields = list(dict.fromkeys(table["field"]))
    fig = make_subplots(rows=len(fields), cols=1, subplot_titles=fields, vertical_spacing=0.12)
    for row, fld in enumerate(fields, start=1):
        part = table[table["field"] == fld]
        for split in [s for s in SPLIT_ORDER if s in set(part["split"])] + sorted(set(part["split"]) - set(SPLIT_ORDER)):
            sub = part[part["split"] == split]
            fig.add_bar(x=sub["group"].astype(str), y=sub["value"], name=split_title(split), legendgroup=split,
                        showlegend=row == 1, customdata=sub.get("n"),
                        hovertemplate="%{x}: %{y:.3f} (n=%{customdata})<extra>" + split_title(split) + "</extra>")
        fig.update_yaxes(title_text="accuracy", range=[0, 1], row=row, col=1)
    fig.update_layout(title=title, barmode="group", height=320 * len(fields))
    return fig


def learning_curves(history: Sequence[dict], metrics: Sequence[str] | None = None, title: str = "Learning curves") -> go.Figure:
    """Training loss and the selection split's metrics per epoch (a run record's `history`)."""
    if not history:
        raise ValueError("learning_curves: the history is empty (probe methods train no epochs)")
    df = pd.DataFrame(list(history))
    _require(df, ["epoch", "train_loss"], "learning_curves")
    if metrics is None:  # headline-style metrics only: averages and worst groups, not every group
        metrics = [c for c in df.columns if "/" in c and (c.endswith("_avg") or "worst" in c or "macro" in c)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["train loss", "selection split"])
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


def variant_bars(table: pd.DataFrame, title: str = "Weight variants of one run") -> go.Figure:
    """Grouped bars: one group per split, one bar per variant (best, last, swa, ema, wise_ft_*).

    `table`: columns variant, split, value (e.g. `analysis.variant_table`), optionally metric.
    """
    _require(table, ["variant", "split", "value"], "variant_bars")
    fig = go.Figure()
    for variant, sub in table.groupby("variant", sort=False):
        fig.add_bar(x=[split_title(s) for s in sub["split"]], y=sub["value"], name=str(variant),
                    text=[f"{v:.3f}" for v in sub["value"]], textposition="outside")
    ytitle = ", ".join(dict.fromkeys(table["metric"])) if "metric" in table.columns else "value"
    fig.update_layout(title=title, barmode="group", yaxis_title=ytitle, height=420)
    return fig


def metric_vs_fraction(summary: pd.DataFrame, reference: dict[str, float] | None = None, title: str = "",
                       yaxis_title: str = "metric", color: str = "method") -> go.Figure:
    """Mean and 95 % interval over seeds against the train fraction, one line per `color` value.

    `summary`: columns fraction, mean, low, high and `color` (stats.summarise output).
    `reference`: horizontal lines, e.g. {"zero-shot": 0.41}.
    """
    _require(summary, ["fraction", "mean", color], "metric_vs_fraction")
    fig = go.Figure()
    for name, sub in summary.sort_values("fraction").groupby(color, sort=False):
        fig.add_scatter(x=sub["fraction"], y=sub["mean"], mode="lines+markers", name=str(name),
                        error_y=_error_bars(sub), customdata=sub.get("n"),
                        hovertemplate="fraction %{x}: %{y:.3f} (n=%{customdata} seeds)<extra>" + str(name) + "</extra>")
    for name, value in (reference or {}).items():
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            fig.add_hline(y=value, line_dash="dash", annotation_text=f"{name} {value:.3f}",
                          annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title="fraction of the train split", yaxis_title=yaxis_title, height=420)
    fig.update_xaxes(type="log")
    return fig


def paired_gain(table: pd.DataFrame, title: str = "Gain", yaxis_title: str = "difference") -> go.Figure:
    """Mean paired difference with its interval per fraction (`analysis.paired_table` output)."""
    _require(table, ["fraction", "mean_diff", "low", "high"], "paired_gain")
    fig = go.Figure()
    color = "comparison" if "comparison" in table.columns else None
    groups = table.groupby(color, sort=False) if color else [("gain", table)]
    for name, sub in groups:
        sub = sub.sort_values("fraction")
        bars = dict(type="data", symmetric=False, array=(sub["high"] - sub["mean_diff"]).fillna(0).to_numpy(),
                    arrayminus=(sub["mean_diff"] - sub["low"]).fillna(0).to_numpy())
        fig.add_scatter(x=sub["fraction"], y=sub["mean_diff"], mode="markers+lines", name=str(name), error_y=bars)
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(title=title, xaxis_title="fraction of the train split", yaxis_title=yaxis_title, height=400)
    fig.update_xaxes(type="log")
    return fig


def id_vs_ood(points: pd.DataFrame, fit: dict | None = None, title: str = "OOD against ID") -> go.Figure:
    """Effective-robustness scatter: one marker per run (colour = method), the y = x line and,
    if given, the baseline trend `fit` ({"slope", "intercept", "label"}, in logit space)."""
    _require(points, ["method", "id", "ood"], "id_vs_ood")
    fig = go.Figure()
    for method, sub in points.groupby("method", sort=False):
        text = [f"fraction {f:g}" for f in sub["fraction"]] if "fraction" in sub.columns else None
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
    fig.update_layout(title=title, xaxis_title="ID metric", yaxis_title="OOD metric", height=480)
    return fig


def worst_groups_bar(table: pd.DataFrame, title: str = "Worst groups") -> go.Figure:
    """Horizontal bars of per-group values (columns group, value; optionally method), worst first."""
    _require(table, ["group", "value"], "worst_groups_bar")
    fig = go.Figure()
    color = "method" if "method" in table.columns else None
    for name, sub in (table.groupby(color, sort=False) if color else [("", table)]):
        fig.add_bar(y=sub["group"].astype(str), x=sub["value"], orientation="h", name=str(name))
    fig.update_layout(title=title, barmode="group", xaxis_title="accuracy", height=max(300, 28 * len(table)))
    fig.update_yaxes(autorange="reversed")
    return fig


# ---------------------------------------------------------------------------------------------
# Images and the static failure gallery
# ---------------------------------------------------------------------------------------------

def thumbnail_png(image, size: int = 128) -> bytes:
    """PNG bytes of a PIL image (or HxWxC uint8 array) scaled to fit `size` pixels (small ones upscaled)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _label(class_names: Sequence[str], y) -> str:
    y = int(y)
    return class_names[y] if 0 <= y < len(class_names) else str(y)


def failure_gallery_html(failures: pd.DataFrame, class_names: Sequence[str], get_image: Callable[[int], object],
                         title: str = "Most confident OOD failures", size: int = 128,
                         group_fields: Sequence[str] = GROUP_FIELDS) -> str:
    """A static HTML grid of failures: thumbnail, true and predicted label, confidence, groups.

    `failures`: rows of a predictions frame (idx, y_true, y_pred, p_top1; e.g. `evaluate.failure_cases`);
    `get_image(idx)`: the image of a full-dataset index (e.g. `dataset.get_input`).
    """
    _require(failures, ["idx", "y_true", "y_pred", "p_top1"], "failure_gallery_html")
    cards = []
    for row in failures.itertuples(index=False):
        uri = png_data_uri(thumbnail_png(get_image(int(row.idx)), size))
        groups = " · ".join(f"{f} {getattr(row, f)}" for f in group_fields if hasattr(row, f))
        cards.append(
            f'<figure style="margin:4px;width:{size + 16}px;font:12px sans-serif">'
            f'<img src="{uri}" width="{size}" height="{size}" style="image-rendering:pixelated" '
            f'alt="example {int(row.idx)}"/>'
            f'<figcaption><b>true</b> {html.escape(_label(class_names, row.y_true))}<br>'
            f'<b style="color:#b00">pred</b> {html.escape(_label(class_names, row.y_pred))} '
            f'({float(row.p_top1):.0%})<br><span style="color:#666">#{int(row.idx)} {html.escape(groups)}</span>'
            f'</figcaption></figure>')
    body = "".join(cards) or "<p>No failures to show.</p>"
    return (f'<div class="clipdg-gallery"><h4>{html.escape(title)}</h4>'
            f'<div style="display:flex;flex-wrap:wrap">{body}</div></div>')


def show_gallery(*args, **kwargs) -> None:
    """Display `failure_gallery_html(...)` (kept in the executed notebook, hence in the report)."""
    from IPython.display import HTML, display

    display(HTML(failure_gallery_html(*args, **kwargs)))
