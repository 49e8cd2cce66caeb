"""Executed notebooks -> a report site that opens offline (`clipdg report`): a page per notebook
under `<experiment>/<stage>/` (nbconvert + templates/) with the site's bar, its provenance and one
parameters cell holding the values the run used; `plotly.min.js` once per folder (inline per page
if `self_contained`); the summary, stage, download, docs and search pages of `report_index.write_index`.
Widget outputs become a note (they need a live kernel); nothing loads from a CDN.
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

from ..analysis.plots import PLOTLY_MIME, figure_html
from ..paths import write_bytes
from .report_index import (TEMPLATES, grid_values, notebook_parts, notebook_title, point_info, read_page_meta,
                           report_roots, stale_failed_pages, write_index, write_plotlyjs)

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p><i>An interactive widget was here (e.g. the failure browser); it runs only with a live "
               "kernel: open the notebook in JupyterLab (<code>make lab</code>). The static gallery stands in "
               "for it in this report.</i></p>")
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\ssrc\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)
_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.IGNORECASE | re.DOTALL)
_PARAMS_HEADER = ("# The values this notebook ran with: its defaults, with those `clipdg run` / papermill gave\n"
                  "# put in place and marked `given`.\n")


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
                data["text/html"] = figure_html(pio.from_json(json.dumps(data[PLOTLY_MIME]), skip_invalid=True))
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


def render_notebook(nb: nbformat.NotebookNode, notebook: Path, out_html: Path, out_dir: Path, roots: list[Path], no_code: bool = False,
                    self_contained: bool = False, neighbours: tuple[str | None, str | None] = (None, None)) -> Path:
    """Render one executed notebook (`nb`, read from `notebook`) to `out_html`, a page of the report folder `out_dir`.

    plotly.js: inline once if `self_contained`, else loaded from `plotly.min.js` in `out_dir`.
    `no_code`: code starts hidden. `roots`: folders the run folders of its done marker are relative
    to (`report_index.report_roots`). `neighbours`: the previous and next point pages of its stage.
    """
    import jinja2
    from nbconvert import HTMLExporter

    info = point_info(notebook, roots)
    grid = grid_values(notebook.stem, info["parameters"])
    nb_title = notebook_title(nb) or notebook.stem
    title = f"{nb_title} · {grid}" if grid else nb_title
    merge_parameter_cells(nb)
    prepare_outputs(nb)
    nb.metadata.pop("widgets", None)  # widget state needs the remote widget manager; the gallery stands in
    nb.metadata["title"] = title
    rel = out_html.relative_to(out_dir)
    root = "../" * (len(rel.parts) - 1)
    has_figures = any("plotly-graph-div" in "".join(o.get("data", {}).get("text/html", ""))
                      for c in nb.cells for o in c.get("outputs", []))
    meta = {"mode": "self-contained" if self_contained else "linked", "code": "hidden" if no_code else "shown",
            "notebook_title": nb_title, "grid": grid, "neighbours": list(neighbours)}
    # breadcrumbs: experiment > stage (its page) > this point, for a page in <experiment>/<stage>/
    crumbs = [(rel.parts[0], None), (rel.parts[1], "index.html")] if len(rel.parts) == 3 else []
    parts = notebook_parts(info, nb, meta, root=root, title=title, crumbs=crumbs, prev=neighbours[0], next=neighbours[1],
                           plotly=has_figures and ("inline" if self_contained else "linked"))
    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.FileSystemLoader(str(TEMPLATES))],
                            template_file="notebook.html.j2", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}, "clipdg": {
        **parts, "body_class": " clipdg-hide-code" if no_code else ""}})
    if _REMOTE_SCRIPT.search(body):
        warnings.warn(f"{out_html} still loads a remote script (from an output of {notebook}); it will not "
                      "open fully offline", stacklevel=2)
    write_bytes(out_html, body.encode("utf-8"))
    return out_html


def _up_to_date(page: Path, notebook: Path, want: dict) -> bool:
    """`page` is newer than its notebook and markers, and was rendered as `want` says (mode, code, neighbours)."""
    if not page.is_file():
        return False
    newest = max(p.stat().st_mtime for p in (notebook, notebook.with_suffix(".done.json"),
                                             notebook.with_suffix(".failed.json")) if p.exists())
    meta = read_page_meta(page)
    return page.stat().st_mtime >= newest and {k: meta.get(k) for k in want} == want


def render_reports(notebooks_dir: str | os.PathLike = "outputs/notebooks", out_dir: str | os.PathLike = "outputs/reports",
                   experiment: str | None = None, stage: str | None = None, no_code: bool = False,
                   only_changed: bool = False, self_contained: bool = False, root: str | os.PathLike | None = None,
                   log: Callable[[str], None] | None = None) -> list[Path]:
    """Render every executed notebook `<notebooks_dir>/<experiment>/<stage>/*.ipynb` (optionally of
    one experiment / stage) to `<out_dir>/<experiment>/<stage>/<point>.html` and write the site
    around them (`report_index.write_index`). `only_changed` keeps a page newer than its notebook and
    markers and of the same mode (a rerun of an unchanged sweep). An unreadable notebook is skipped
    with a message naming it (`log`, default: a warning). `root`: where the run folders of done
    markers are relative to (default: the folder holding outputs/notebooks, then the project root)."""
    notebooks_dir, out = Path(notebooks_dir), Path(out_dir)
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"no executed notebooks: {notebooks_dir} does not exist; run an experiment first "
                                "(clipdg run parameters/demo.yaml)")
    pattern = f"{experiment or '*'}/{stage or '*'}/*.ipynb"
    # hidden names are the runner's notebooks being written (renamed into place when complete)
    found = sorted(p for p in notebooks_dir.glob(pattern) if not any(
        part.startswith(".") for part in p.relative_to(notebooks_dir).parts))  # .ipynb_checkpoints too
    if not found:
        raise FileNotFoundError(f"no executed notebooks match {notebooks_dir / pattern}")
    say = log or (lambda msg: warnings.warn(msg, stacklevel=3))
    roots = report_roots(notebooks_dir, root)
    mode = {"mode": "self-contained" if self_contained else "linked", "code": "hidden" if no_code else "shown"}
    written = []
    for nb in found:
        target = out / nb.relative_to(notebooks_dir).with_suffix(".html")
        siblings = [None] + [p.with_suffix(".html").name for p in found if p.parent == nb.parent] + [None]
        at = siblings.index(target.name)
        neighbours = (siblings[at - 1], siblings[at + 1])
        if only_changed and _up_to_date(target, nb, {**mode, "neighbours": list(neighbours)}):
            written.append(target)
            continue
        try:
            node = nbformat.read(str(nb), as_version=4)
        except (ValueError, OSError, UnicodeDecodeError) as err:  # NotJSONError is a ValueError
            say(f"skipping {nb}: not a readable notebook ({type(err).__name__}: {str(err)[:200]})")
            continue
        written.append(render_notebook(node, nb, target, out, roots, no_code, self_contained, neighbours))
    if written and not self_contained:
        write_plotlyjs(out)  # pages kept by only_changed load it too
    for page in stale_failed_pages(out, notebooks_dir, experiment, stage):  # the point succeeded since
        page.unlink(missing_ok=True)
    write_index(out, notebooks_dir, roots, self_contained=self_contained)
    return written
