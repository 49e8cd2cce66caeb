"""Executed notebooks -> a report site that opens offline (`clipdg report`).

One folder: a page per executed notebook under `<experiment>/<stage>/`, `plotly.min.js` once (loaded
by relative `<script src>`; `self_contained=True` inlines it per page), and the summary, stage,
download and search pages `report_index.write_index` writes around them.

Each page has the site's bar (navigation, status, a show / hide code button), a provenance block
(from the run records: versions, commit, hardware, data, weights, parameters) and one parameters
cell with the values the run used. CDN scripts are left out, inline plotly.js is stripped, plotly
outputs get an HTML form and widget outputs become a note (they need a live kernel).
nbconvert + Jinja2 (templates/), not a site generator: it is already a dependency and works offline.
"""
from __future__ import annotations

import ast
import json
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import nbformat

from ..paths import write_bytes
from .report_index import (PLOTLYJS_FILE, TEMPLATES, grid_values, notebook_parts, notebook_title, plotlyjs, point_info,
                           read_page_meta, report_roots, stale_failed_pages, write_index, write_plotlyjs)

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p><i>An interactive widget was here (e.g. the failure browser); it runs only with a live "
               "kernel: open the notebook in JupyterLab (<code>make lab</code>). The static gallery stands in "
               "for it in this report.</i></p>")
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\ssrc\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)
_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.IGNORECASE | re.DOTALL)
_PARAMS_HEADER = ("# The values this notebook ran with: its defaults, with those `clipdg run` / papermill gave\n"
                  "# put in place and marked `given`.\n")


# ---------------------------------------------------------------------------------------------
# Outputs: plotly.js out, HTML in, widgets noted
# ---------------------------------------------------------------------------------------------

def strip_plotlyjs(text: str) -> tuple[str, int]:
    """`text` without the `<script>`s that hold plotly.js itself (its banner names it); figure
    scripts stay. Returns the text and how many were removed."""
    removed = 0

    def drop(match):
        nonlocal removed
        if "plotly.js v" in match.group(1)[:400] and len(match.group(1)) > 100_000:
            removed += 1
            return ""
        return match.group(0)

    return (_SCRIPT.sub(drop, text) if "plotly.js v" in text else text), removed


def prepare_outputs(nb: nbformat.NotebookNode) -> dict[str, int]:
    """Changes `nb` in place for a report that loads plotly.js once from outside: plotly-only
    outputs get an HTML form, inline plotly.js is stripped (outputs left empty are dropped), widget
    outputs become a note. Returns counts: converted, stripped, widgets."""
    import plotly.io as pio

    counts = {"converted": 0, "stripped": 0, "widgets": 0}
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE}
                counts["widgets"] += 1
            elif PLOTLY_MIME in data and "text/html" not in data:
                fig = pio.from_json(json.dumps(data[PLOTLY_MIME]), skip_invalid=True)
                data["text/html"] = fig.to_html(full_html=False, include_plotlyjs=False)
                counts["converted"] += 1
            elif "text/html" in data:
                text, n = strip_plotlyjs("".join(data["text/html"]))
                counts["stripped"] += n
                if n and not re.sub(r"<script>window\.PlotlyConfig[^<]*</script>", "", text).strip():
                    continue  # only plotly.js was there (setup_notebook)
                data["text/html"] = text
            kept.append(out)
        if "outputs" in cell:
            cell["outputs"] = kept
    return counts


# ---------------------------------------------------------------------------------------------
# The parameters actually used
# ---------------------------------------------------------------------------------------------

def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def _assigned(node) -> tuple[str, ast.expr] | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value
    return None


def _same(a: str, b: str) -> bool:
    try:
        return ast.literal_eval(a) == ast.literal_eval(b)
    except (ValueError, SyntaxError):
        return a == b


def _merge_parameters(defaults: str, injected: str) -> str | None:
    """The defaults cell with the injected values in place (marked `given`); None if unparsable."""
    try:
        given = {a[0]: ast.get_source_segment(injected, a[1]) for n in ast.parse(injected).body if (a := _assigned(n))}
        tree = ast.parse(defaults)
    except SyntaxError:
        return None
    lines = defaults.splitlines()
    for node in reversed(tree.body):  # from the bottom, so earlier offsets stay valid
        found = _assigned(node)
        if not found or found[0] not in given:
            continue
        name, value = found
        old = " ".join(ast.get_source_segment(defaults, value).split())
        head = lines[value.lineno - 1].encode()[:value.col_offset].decode()
        tail = lines[value.end_lineno - 1].encode()[value.end_col_offset:].decode()
        note = "given" if _same(old, given[name]) else f"given; default {old if len(old) <= 40 else old[:37] + '...'}"
        comment = tail.strip()[1:].strip() if tail.strip().startswith("#") else ""
        tail = f"  # {note}" + (f" · {comment}" if comment else "") if comment or not tail.strip() else f"{tail}  # {note}"
        lines[value.lineno - 1:value.end_lineno] = (head + given.pop(name) + tail).splitlines()
    extra = [f"{k} = {v}  # given (not a parameter the notebook declares)" for k, v in given.items()]
    return _PARAMS_HEADER + "\n".join(lines + extra)


def merge_parameter_cells(nb: nbformat.NotebookNode) -> bool:
    """One cell, tagged `parameters`, showing the values actually used, in place of the notebook's
    defaults cell followed by papermill's injected cell. Changes `nb` in place; False if none."""
    inj = next((i for i, c in enumerate(nb.cells) if "injected-parameters" in _tags(c)), None)
    if inj is None:
        return False
    par = next((i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)), None)
    merged = _merge_parameters(nb.cells[par].source, nb.cells[inj].source) if par is not None else None
    if merged is None:  # no defaults cell (or unparsable): the injected cell alone, labelled
        nb.cells[inj].source = _PARAMS_HEADER + nb.cells[inj].source
        nb.cells[inj].metadata["tags"] = ["parameters"]
        return True
    nb.cells[par].source = merged
    nb.cells[par].execution_count = nb.cells[inj].get("execution_count")  # the values as of that cell
    del nb.cells[inj]
    return True


# ---------------------------------------------------------------------------------------------
# One page
# ---------------------------------------------------------------------------------------------

class UnreadableNotebook(ValueError):
    """An executed notebook that cannot be read (truncated, not JSON); the message names it."""


def _exporter():
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.FileSystemLoader(str(TEMPLATES))])
    exporter.template_file = "notebook.html.j2"
    exporter.embed_images = True
    return exporter


def render_notebook(notebook: str | os.PathLike, out_html: str | os.PathLike, no_code: bool = False,
                    title: str | None = None, self_contained: bool = False, index: str | os.PathLike | None = None,
                    roots: list | None = None, neighbours: tuple[str | None, str | None] = (None, None)) -> Path:
    """Render one executed notebook to `out_html` (written atomically).

    plotly.js: inline once if `self_contained`, else loaded from `plotly.min.js` in the folder of
    `index` (default: `out_html`'s folder; see `write_plotlyjs`). `no_code`: code starts hidden.
    `roots`: folders the run folders of its done marker are relative to (`report_index.report_roots`).
    `neighbours`: the previous and next point pages of its stage (file names), linked from its bar.
    """
    notebook, out_html = Path(notebook), Path(out_html)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # NotJSONError is a ValueError
        raise UnreadableNotebook(f"{notebook}: not a readable notebook ({type(err).__name__}: "
                                 f"{str(err)[:200]})") from err
    info = point_info(notebook, roots or report_roots(notebook.parent))
    grid = grid_values(notebook.stem, info["parameters"])
    nb_title = notebook_title(nb) or notebook.stem
    title = title or (f"{nb_title} · {grid}" if grid else nb_title)
    merge_parameter_cells(nb)
    prepare_outputs(nb)
    nb.metadata.pop("widgets", None)  # widget state needs the remote widget manager; the gallery stands in
    nb.metadata["title"] = title
    index_path = Path(index) if index is not None else out_html.parent / "index.html"
    rel = Path(os.path.relpath(index_path.parent, out_html.parent)).as_posix()
    root = "" if rel == "." else f"{rel}/"
    has_figures = any("plotly-graph-div" in "".join(o.get("data", {}).get("text/html", ""))
                      for c in nb.cells for o in c.get("outputs", []))
    plotly_src = plotly_inline = None
    if has_figures and self_contained:
        plotly_inline = plotlyjs()
    elif has_figures:
        write_plotlyjs(index_path.parent)
        plotly_src = f"{root}{PLOTLYJS_FILE}"
    prev, next_ = neighbours
    meta = {"mode": "self-contained" if self_contained else "linked", "code": "hidden" if no_code else "shown",
            "notebook_title": nb_title, "grid": grid, "neighbours": [prev, next_]}
    # breadcrumbs: experiment > stage (its page) > this point, for a page in <experiment>/<stage>/
    parts = out_html.resolve().relative_to(index_path.parent.resolve()).parts if root == "../../" else ()
    crumbs = [(parts[0], None), (parts[1], "index.html")] if len(parts) == 3 else []
    clipdg = notebook_parts(info, nb, meta, root, title, crumbs, prev, next_, plotly_src, plotly_inline)
    resources = {"metadata": {"name": title},
                 "clipdg": {**clipdg, "body_class": " clipdg-hide-code" if no_code else ""}}
    body, _ = _exporter().from_notebook_node(nb, resources=resources)
    if _REMOTE_SCRIPT.search(body):
        warnings.warn(f"{out_html} still loads a remote script (from an output of {notebook}); it will not "
                      "open fully offline", stacklevel=2)
    write_bytes(out_html, body.encode("utf-8"))
    return out_html


# ---------------------------------------------------------------------------------------------
# A folder of reports
# ---------------------------------------------------------------------------------------------

def find_notebooks(notebooks_dir: str | os.PathLike = "outputs/notebooks", experiment: str | None = None,
                   stage: str | None = None) -> list[Path]:
    """Executed notebooks under `<notebooks_dir>/<experiment>/<stage>/*.ipynb`, sorted."""
    root = Path(notebooks_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no executed notebooks: {root} does not exist; run an experiment first "
                                "(clipdg run parameters/demo.yaml)")
    pattern = f"{experiment or '*'}/{stage or '*'}/*.ipynb"
    # hidden names are the runner's notebooks being written (renamed into place when complete)
    found = sorted(p for p in root.glob(pattern) if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no executed notebooks match {root / pattern}")
    return found


def _up_to_date(page: Path, notebook: Path, mode: str, code: str, neighbours: tuple) -> bool:
    if not page.is_file():
        return False
    inputs = [notebook, *(notebook.with_suffix(s) for s in (".done.json", ".failed.json"))]
    newest = max(p.stat().st_mtime for p in inputs if p.exists())
    meta = read_page_meta(page)
    return page.stat().st_mtime >= newest and (meta.get("mode"), meta.get("code"), tuple(meta.get("neighbours") or (
        None, None))) == (mode, code, tuple(neighbours))


def render_reports(notebooks_dir: str | os.PathLike = "outputs/notebooks", out_dir: str | os.PathLike = "outputs/reports",
                   experiment: str | None = None, stage: str | None = None, no_code: bool = False,
                   only_changed: bool = False, self_contained: bool = False, root: str | os.PathLike | None = None,
                   log: Callable[[str], None] | None = None) -> list[Path]:
    """Render every executed notebook (optionally of one experiment / stage) to
    `<out_dir>/<experiment>/<stage>/<point>.html`, write `plotly.min.js` (unless `self_contained`)
    and `<out_dir>/index.html`. `only_changed` keeps a page newer than its notebook and markers
    (a rerun of an unchanged sweep). An unreadable notebook is skipped with a message naming it
    (`log`, default: a warning). `root`: where the run folders of done markers are relative to
    (default: the folder holding outputs/notebooks, then the project root)."""
    notebooks_dir, out = Path(notebooks_dir), Path(out_dir)
    say = log or (lambda msg: warnings.warn(msg, stacklevel=3))
    roots = report_roots(notebooks_dir, root)
    written = []
    found = find_notebooks(notebooks_dir, experiment, stage)
    for nb in found:
        target = out / nb.relative_to(notebooks_dir).with_suffix(".html")
        siblings = [p.with_suffix(".html").name for p in found if p.parent == nb.parent]
        at = siblings.index(target.name)
        neighbours = (siblings[at - 1] if at > 0 else None, siblings[at + 1] if at + 1 < len(siblings) else None)
        if only_changed and _up_to_date(target, nb, "self-contained" if self_contained else "linked",
                                        "hidden" if no_code else "shown", neighbours):
            written.append(target)
            continue
        try:
            written.append(render_notebook(nb, target, no_code=no_code, self_contained=self_contained,
                                           index=out / "index.html", roots=roots, neighbours=neighbours))
        except UnreadableNotebook as err:
            say(f"skipping {err}")
    if written and not self_contained:
        write_plotlyjs(out)  # pages kept by only_changed load it too
    for page in stale_failed_pages(out, notebooks_dir, experiment, stage):  # the point succeeded since
        page.unlink(missing_ok=True)
    write_index(out, notebooks_dir, roots, self_contained=self_contained)
    return written
