"""Executed notebooks -> self-contained HTML reports (`clipdg report`).

A report opens offline: the lab template's remote scripts (require.js, MathJax, mermaid and the
widget manager, all from CDNs) are left out, figures are HTML with plotly.js inline (see
`plots.show`), and images are embedded. Figures displayed with plain `fig.show()` (plotly's own
mimetype, which nbconvert would drop) are converted to inline HTML here too. Widgets do not run
in a static page; the notebooks add a static failure gallery for that reason.
"""
from __future__ import annotations

import copy
import html
import json
import os
import re
import warnings
from pathlib import Path

import nbformat

from ..runs import write_bytes

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p><i>An interactive widget was here (e.g. the failure browser); it runs only with a live "
               "kernel: open the notebook in JupyterLab (<code>make lab</code>). The static gallery stands in "
               "for it in this report.</i></p>")
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{#- No CDN: these blocks would load require.js, MathJax, mermaid and the widget manager remotely. -#}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\ssrc\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def _has_inline_plotlyjs(text: str) -> bool:
    # plotly.min.js starts with a banner naming itself; a figure div alone does not contain it.
    return "plotly.js v" in text and "<script" in text


def inline_plotly_outputs(nb: nbformat.NotebookNode) -> int:
    """Give every plotly-only output (from `fig.show()`) an HTML form with plotly.js inline once.
    Returns how many outputs were converted. Changes `nb` in place."""
    import plotly.io as pio

    seen_js, converted = False, 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/html" in data and _has_inline_plotlyjs("".join(data["text/html"])):
                seen_js = True
            if PLOTLY_MIME in data and "text/html" not in data:
                fig = pio.from_json(json.dumps(data[PLOTLY_MIME]), skip_invalid=True)
                data["text/html"] = fig.to_html(full_html=False, include_plotlyjs=not seen_js)
                seen_js, converted = True, converted + 1
    return converted


def replace_widget_outputs(nb: nbformat.NotebookNode) -> int:
    """Swap widget outputs (a model id and a `VBox(...)` repr, useless without a kernel) for a short
    note. Returns how many were replaced. Changes `nb` in place."""
    replaced = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if WIDGET_MIME in out.get("data", {}):
                out["data"] = {"text/html": WIDGET_NOTE}
                replaced += 1
    return replaced


def _exporter(no_code: bool):
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"clipdg_offline.html.j2": _OFFLINE_TEMPLATE})])
    exporter.template_file = "clipdg_offline.html.j2"
    exporter.embed_images = True
    if no_code:
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
    return exporter


def read_notebook(notebook: str | os.PathLike) -> nbformat.NotebookNode:
    """An executed notebook; a ValueError naming the file when it is not a readable notebook."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    try:
        return nbformat.read(str(notebook), as_version=4)
    except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as err:  # not JSON, not a notebook
        raise ValueError(f"{notebook} is not a readable notebook: {type(err).__name__}: {err}") from err


def render_notebook(notebook: str | os.PathLike, out_html: str | os.PathLike, no_code: bool = False,
                    title: str | None = None, nb: nbformat.NotebookNode | None = None) -> Path:
    """Render one executed notebook (read from `notebook` unless given as `nb`) to a self-contained
    HTML file (written atomically)."""
    notebook, out_html = Path(notebook), Path(out_html)
    nb = copy.deepcopy(nb if nb is not None else read_notebook(notebook))
    inline_plotly_outputs(nb)
    replace_widget_outputs(nb)
    nb.metadata.pop("widgets", None)  # widget state needs the remote widget manager; the gallery stands in
    body, _ = _exporter(no_code).from_notebook_node(nb, resources={"metadata": {"name": title or notebook.stem}})
    if _REMOTE_SCRIPT.search(body):
        warnings.warn(f"{out_html} still loads a remote script (from an output of {notebook}); it will not "
                      "open fully offline", stacklevel=2)
    write_bytes(out_html, body.encode("utf-8"))
    return out_html


def find_notebooks(notebooks_dir: str | os.PathLike = "outputs/notebooks", experiment: str | None = None,
                   stage: str | None = None) -> list[Path]:
    """Executed notebooks under `<notebooks_dir>/<experiment>/<stage>/*.ipynb`, sorted: each point's
    `<point>.ipynb` (a successful execution) and `<point>.failed.ipynb` (the last failed one);
    the runner's hidden temporary notebooks (`.<point>.ipynb.*`) are left out."""
    root = Path(notebooks_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no executed notebooks: {root} does not exist; run an experiment first "
                                "(clipdg run parameters/demo.yaml)")
    pattern = f"{experiment or '*'}/{stage or '*'}/*.ipynb"
    found = sorted(p for p in root.glob(pattern)
                   if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no executed notebooks match {root / pattern}")
    return found


def render_reports(notebooks_dir: str | os.PathLike = "outputs/notebooks", out_dir: str | os.PathLike = "outputs/reports",
                   experiment: str | None = None, stage: str | None = None, no_code: bool = False,
                   only_changed: bool = False) -> list[Path]:
    """Render every executed notebook (optionally of one experiment / stage) to
    `<out_dir>/<experiment>/<stage>/<point>.html`, plus `<out_dir>/index.html` linking them.
    `only_changed` keeps an HTML file newer than its notebook (a rerun of an unchanged sweep).
    A notebook that cannot be read (e.g. cut short) is skipped with a warning naming it."""
    root, out = Path(notebooks_dir), Path(out_dir)
    written = []
    for nb in find_notebooks(root, experiment, stage):
        rel = nb.relative_to(root).with_suffix(".html")
        failed = nb.name.endswith(".failed.ipynb")
        title = " / ".join(rel.with_suffix("").parts).removesuffix(".failed") + (" (FAILED)" if failed else "")
        target = out / rel
        if only_changed and target.exists() and target.stat().st_mtime >= nb.stat().st_mtime:
            written.append(target)
            continue
        try:
            node = read_notebook(nb)
        except (ValueError, OSError) as err:
            warnings.warn(f"report skipped: {err}", stacklevel=2)
            continue
        written.append(render_notebook(nb, target, no_code=no_code, title=title, nb=node))
    write_index(out)
    return written


def write_index(out_dir: str | os.PathLike) -> Path:
    """`<out_dir>/index.html`: a list of links to every report below it."""
    out = Path(out_dir)
    items = []
    for page in sorted(out.rglob("*.html")):
        if page.name == "index.html" and page.parent == out:
            continue
        rel = page.relative_to(out).as_posix()
        items.append(f'<li><a href="{html.escape(rel)}">{html.escape(rel[:-5])}</a></li>')
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>clipdg reports</title></head>"
            "<body style='font-family:sans-serif'><h1>clipdg reports</h1><ul>" + "".join(items) + "</ul></body></html>")
    target = out / "index.html"
    write_bytes(target, page.encode("utf-8"))
    return target
