"""Plotly figures for the notebooks, and how they are displayed so that notebooks and reports keep them.

`show(fig)`, not `fig.show()`: it emits plotly's mimetype (drawn by JupyterLab without trust) and
HTML (a `<div>` plus script, kept by nbconvert and `clipdg report`) in one output. plotly.js is put
inline once per notebook (`setup_notebook()` or the first `show`), never from a CDN; under
`clipdg run` ($CLIPDG_INLINE_PLOTLYJS=0) it is left out, since the report loads it once per folder.
The failure gallery is static HTML (inline base64 thumbnails): widget callbacks do not run in a report.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..data import GROUP_FIELDS
from .figures import require_columns  # one check for every figure's columns

_PLOTLYJS_SENT = False
INLINE_PLOTLYJS_ENV = "CLIPDG_INLINE_PLOTLYJS"  # "0": no plotly.js inline (set by the sweep runner)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------

def plotlyjs_html() -> str:
    """A `<script>` holding plotly.js itself (no network needed to draw figures after it)."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def inline_plotlyjs() -> bool:
    """Whether plotly.js goes inline into the notebook (not under `clipdg run`: its reports load it)."""
    return os.environ.get(INLINE_PLOTLYJS_ENV, "1").strip() != "0"


def setup_notebook() -> None:
    """Put plotly.js inline in this cell's output; later `show(fig)` calls reuse it.

    Call it in the notebook's first code cell: re-running that cell re-sends plotly.js, so the
    figures keep working after outputs were cleared in JupyterLab. Under `clipdg run` it displays
    nothing (`inline_plotlyjs`).
    """
    global _PLOTLYJS_SENT
    from IPython.display import HTML, display

    if inline_plotlyjs():
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

    display(figure_bundle(fig, include_plotlyjs=not _PLOTLYJS_SENT and inline_plotlyjs()), raw=True)
    _PLOTLYJS_SENT = True


# ---------------------------------------------------------------------------------------------
# Small helpers (the figures themselves live in figures.py; re-exported here)
# ---------------------------------------------------------------------------------------------

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

    `failures`: rows of a predictions frame (idx, y_true, y_pred, p_top1; e.g. `tables.failure_cases`);
    `get_image(idx)`: the image of a full-dataset index (e.g. `dataset.get_input`).
    """
    require_columns(failures, ["idx", "y_true", "y_pred", "p_top1"], "failure_gallery_html")
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
