"""Reports: executed notebooks -> a folder of HTML pages (plotly.js once, beside index.html) that open
with no network, with an index (titles, status, headline numbers), provenance, the parameters
actually used and a show / hide code button."""
from __future__ import annotations

import json
import re

import nbformat
import papermill
import pytest
from browser import check_page_offline, lab_browser, lab_server, needs_browser  # noqa: F401 (fixtures)
from plotly.offline import get_plotlyjs

from clipdg_nb import runs
from clipdg_nb.pipeline.report import (PLOTLY_MIME, merge_parameter_cells, prepare_outputs, render_reports,
                                       strip_plotlyjs)

PARAMS = "experiment = 'scratch'  # the experiment\ndataset = 'fmow'\nlevel: float = 0.95  # untouched default\n"
CODE = '''import numpy as np
import plotly.graph_objects as go
from PIL import Image
import pandas as pd
from clipdg_nb.analysis import plots  # code-marker-42

plots.setup_notebook()
plots.show(go.Figure(go.Bar(x=["north", "south"], y=[11.5, 22.25], name="trace-alpha")))
plots.show(go.Figure(go.Scatter(x=[1, 2, 3], y=[3.5, 1.25, 2.0], name="trace-beta")))
go.Figure(go.Bar(x=["x"], y=[7.75], name="trace-gamma")).show()  # plotly's own mimetype only
failures = pd.DataFrame({"idx": [3], "y_true": [0], "y_pred": [1], "p_top1": [0.875], "region": ["Asia"]})
plots.show_gallery(failures, ["cat", "dog"], lambda i: Image.new("RGB", (8, 8), (200, 10, 10)))
import ipywidgets
ipywidgets.IntSlider(description="knob")
'''
RUN_ID = "fmow-finetune-f0.5-lr0.0001-s0-feedf00d"
PJS = get_plotlyjs()[:300]  # the start of plotly.js itself


def _fake_run(root):
    metrics = {"id_val": {"acc_avg": 0.6}, "id_test": {"acc_avg": 0.6125}, "val": {"acc_worst_region": 0.3},
               "test": {"acc_avg": 0.5, "acc_worst_region": 0.3456}}
    params = {"model": "ViT-B-32", "pretrained": "weights-abc.safetensors", "vision_weights": "vision-xyz.safetensors",
              "root_dir": "/data/wilds-root"}
    record = dict(run_id=RUN_ID, experiment="exp", dataset="fmow", root_dir="/data/wilds-root", method="finetune",
                  fraction=0.5, seed=0, lr=1e-4, params=params, metrics=metrics, selection={"split": "id_val", "variant": "best"})
    runs.Run(root / "outputs/runs/exp" / RUN_ID).finish(record)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A report\n\ntext"), params, nbformat.v4.new_code_cell(CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp / "src.ipynb"
    nbformat.write(nb, str(src))
    stage = tmp / "outputs/notebooks/exp/stage"
    stage.mkdir(parents=True)
    papermill.execute_notebook(str(src), str(stage / "dataset-fmow.ipynb"), parameters={"experiment": "exp"},
                               kernel_name="python3", progress_bar=False, cwd=str(tmp))
    _fake_run(tmp)
    given = {"experiment": "exp", "dataset": "fmow"}
    runs.write_json(stage / "dataset-fmow.done.json", {"parameters": given, "run_dirs": [f"outputs/runs/exp/{RUN_ID}"]})
    # a failed point: its notebook (with the error) and its marker
    bad = nbformat.v4.new_notebook()
    bad.cells = [nbformat.v4.new_markdown_cell("# A report"), nbformat.v4.new_code_cell("1 / 0", outputs=[
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])])]
    nbformat.write(bad, str(stage / "dataset-iwildcam.ipynb"))
    runs.write_json(stage / "dataset-iwildcam.failed.json", {"parameters": {**given, "dataset": "iwildcam"},
                                                             "ename": "ZeroDivisionError", "evalue": "division by zero"})
    # an analysis-like point: it writes no run, it reads the experiment's
    (tmp / "outputs/notebooks/exp/analysis").mkdir()
    reader = nbformat.v4.new_notebook()
    reader.cells = [nbformat.v4.new_markdown_cell("# Analysis")]
    nbformat.write(reader, str(tmp / "outputs/notebooks/exp/analysis/dataset-fmow.ipynb"))
    runs.write_json(tmp / "outputs/notebooks/exp/analysis/dataset-fmow.done.json", {
        "parameters": {"experiment": "exp", "output_dir": "outputs/runs", "dataset": "fmow"}, "run_dirs": []})
    (tmp / "outputs/notebooks/exp/other").mkdir()
    (tmp / "outputs/notebooks/exp/other/truncated.ipynb").write_text('{"cells": [')
    messages = []
    notebooks = tmp / "outputs/notebooks"
    linked = render_reports(notebooks, tmp / "reports", experiment="exp", log=messages.append)
    alone = render_reports(notebooks, tmp / "reports_sc", self_contained=True, log=messages.append)
    hidden = render_reports(notebooks, tmp / "reports_nocode", no_code=True, log=messages.append)
    page = tmp / "reports/exp/stage/dataset-fmow.html"
    return {"tmp": tmp, "page": page, "html": page.read_text(), "index": (tmp / "reports/index.html").read_text(),
            "alone": (tmp / "reports_sc/exp/stage/dataset-fmow.html").read_text(),
            "hidden": (tmp / "reports_nocode/exp/stage/dataset-fmow.html").read_text(),
            "written": linked + alone + hidden, "messages": messages}


def test_show_displays_plotly_mimetype_and_html(rendered):
    nb = nbformat.read(str(rendered["tmp"] / "outputs/notebooks/exp/stage/dataset-fmow.ipynb"), as_version=4)
    bundles = [o.data for c in nb.cells for o in c.get("outputs", []) if PLOTLY_MIME in o.get("data", {})]
    both = [d for d in bundles if "text/html" in d]
    assert len(both) == 2  # the two plots.show figures; fig.show() gives the mimetype alone
    assert both[0][PLOTLY_MIME]["data"][0]["name"] == "trace-alpha" and "Plotly.newPlot" in both[0]["text/html"]


def test_plotlyjs_once_per_folder(rendered):
    tmp, html = rendered["tmp"], rendered["html"]
    for value in ("trace-alpha", "22.25", "trace-beta", "1.25", "trace-gamma", "7.75"):
        assert value in html
    assert html.count("Plotly.newPlot") >= 3
    assert PJS not in html  # stripped from the outputs ...
    assert html.count('src="../../plotly.min.js"') == 1  # ... loaded once from the folder
    assert (tmp / "reports/plotly.min.js").read_text() == get_plotlyjs()
    assert len(html) < 1_000_000, len(html)
    assert sorted(p.name for p in (tmp / "reports").rglob("*.js")) == ["plotly.min.js", "search-index.js"]


def test_self_contained_has_plotlyjs_inline_once(rendered):
    alone = rendered["alone"]
    assert alone.count(PJS) == 1 and "plotly.min.js" not in alone
    assert "trace-gamma" in alone
    assert not (rendered["tmp"] / "reports_sc/plotly.min.js").exists()


@pytest.mark.parametrize("key", ["html", "alone", "index"])
def test_no_remote_resources(rendered, key):
    html = rendered[key]
    assert not re.search(r"<script[^>]*\ssrc=[\"']?(https?:)?//", html)
    assert not re.search(r"<link[^>]*href=[\"']?(https?:)?//", html)


def test_static_gallery_and_widget_note(rendered):
    html = rendered["html"]
    assert "data:image/png;base64," in html and "dog" in html and "88%" in html
    assert "IntSlider(" not in html and "live kernel" in html


def test_stage_pages_list_titles_status_headline_and_links(rendered):
    tmp = rendered["tmp"]
    stages = (tmp / "reports/stages.html").read_text()
    assert "<h2>Experiment <code>exp</code></h2>" in stages and "1 failed" in stages
    assert '<a href="exp/stage/index.html">stage</a></td><td>A report</td>' in stages  # stage and notebook title
    stage = (tmp / "reports/exp/stage/index.html").read_text()
    assert '<a href="dataset-fmow.html">dataset=fmow</a>' in stage  # grid values
    assert '<a href="dataset-iwildcam.html">dataset=iwildcam</a>' in stage
    row = re.search(r'<tr class="failed">.*?</tr>', stage, re.S).group(0)
    assert "dataset-iwildcam" in row and "FAILED" in row and "ZeroDivisionError: division by zero" in row
    assert "ID test acc_avg" in stage and "0.613" in stage and "0.346" in stage  # headline numbers
    assert "finetune lr=0.0001" in stage
    assert "truncated" not in stages + stage + rendered["index"]
    # the summary names the failed point and links it
    assert '1 failed point(s)</b>: <a href="exp/stage/dataset-iwildcam.html">exp/stage/dataset-iwildcam</a>' in \
        rendered["index"]


def test_page_links_back_shows_status_and_provenance(rendered):
    html = rendered["html"]
    assert 'href="../../index.html"' in html and "A report · dataset=fmow" in html
    assert 'href="../../stages.html"' in html and 'href="../../downloads.html"' in html and 'href="index.html"' in html
    assert 'class="clipdg-done"' in html
    prov = re.search(r'<details class="clipdg-provenance">.*?</details>', html, re.S).group(0)
    record = runs.Run(rendered["tmp"] / "outputs/runs/exp" / RUN_ID).record()
    for text in (record["git_commit"] or "git commit", f"torch {record['versions']['torch']}", "/data/wilds-root",
                 "weights-abc.safetensors", "vision-xyz.safetensors", "ViT-B-32", RUN_ID, 'experiment = "exp"'):
        assert text in prov, text
    failed = (rendered["tmp"] / "reports/exp/stage/dataset-iwildcam.html").read_text()
    assert "FAILED" in failed and "none listed" in failed
    reader = (rendered["tmp"] / "reports/exp/analysis/dataset-fmow.html").read_text()
    assert "it read 1 run record(s)" in reader and "weights-abc.safetensors" in reader


def test_parameters_actually_used_replace_defaults(rendered):
    html = rendered["html"]
    assert "celltag_injected-parameters" not in html
    assert len(re.findall(r'class="jp-Cell jp-CodeCell[^"]*celltag_parameters', html)) == 1
    nb = nbformat.read(str(rendered["tmp"] / "outputs/notebooks/exp/stage/dataset-fmow.ipynb"), as_version=4)
    assert merge_parameter_cells(nb)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    lines = cell.source.splitlines()
    assert 'experiment = "exp"  # given; default \'scratch\' · the experiment' in lines
    assert "dataset = 'fmow'" in lines and "level: float = 0.95  # untouched default" in lines
    assert "scratch" not in cell.source.replace("default 'scratch'", "")


def test_code_toggle_and_no_code_default(rendered):
    html, hidden = rendered["html"], rendered["hidden"]
    for page in (html, hidden):
        assert "code-marker-42" in page and "classList.toggle('clipdg-hide-code')" in page
    assert re.search(r'<body class="jp-Notebook"', html)
    assert re.search(r'<body class="jp-Notebook clipdg-hide-code"', hidden)


def test_unreadable_notebook_is_skipped_by_name(rendered):
    assert any("truncated.ipynb" in m and "not a readable notebook" in m for m in rendered["messages"])
    assert len(rendered["written"]) == 9  # three pages, three renders


def test_only_changed_keeps_pages_of_the_same_mode(rendered, tmp_path):
    tmp = rendered["tmp"]
    out = tmp_path / "reports"
    first = render_reports(tmp / "outputs/notebooks", out, stage="stage")
    first = [p for p in first if p.name == "dataset-fmow.html"]
    stamp = first[0].stat().st_mtime_ns
    render_reports(tmp / "outputs/notebooks", out, stage="stage", only_changed=True)
    assert first[0].stat().st_mtime_ns == stamp
    render_reports(tmp / "outputs/notebooks", out, stage="stage", only_changed=True, self_contained=True)
    assert PJS in first[0].read_text()  # another mode: rendered again


def test_plotly_outputs_prepared():
    nb = nbformat.v4.new_notebook()
    only = nbformat.v4.new_output("display_data", data={PLOTLY_MIME: {"data": [{"type": "bar", "x": ["a"], "y": [1.5]}],
                                                                      "layout": {}}})
    js = nbformat.v4.new_output("display_data", data={"text/html": f'<script type="text/javascript">{get_plotlyjs()}</script>',
                                                      "text/plain": "<HTML>"})
    nb.cells = [nbformat.v4.new_code_cell("fig.show()", outputs=[only]), nbformat.v4.new_code_cell("setup", outputs=[js])]
    assert prepare_outputs(nb) == {"converted": 1, "stripped": 1, "widgets": 0}
    assert "Plotly.newPlot" in nb.cells[0].outputs[0].data["text/html"] and PJS not in json.dumps(nb)
    assert nb.cells[1].outputs == []  # only plotly.js was there
    assert strip_plotlyjs("<div>x</div><script>Plotly.newPlot('a')</script>") == (
        "<div>x</div><script>Plotly.newPlot('a')</script>", 0)


def test_missing_notebooks_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="clipdg run"):
        render_reports(tmp_path / "none", tmp_path / "reports")


def test_unreadable_notebook_is_skipped_and_named_the_rest_render(tmp_path):
    stage = tmp_path / "notebooks/exp/stage"
    stage.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# good-marker")]
    nbformat.write(nb, str(stage / "a.ipynb"))
    nbformat.write(nb, str(stage / "b.failed.ipynb"))  # the last failed execution of point b
    (stage / "b.failed.json").write_text('{"ename": "ValueError", "evalue": "boom", "parameters": {}}')
    whole = (stage / "a.ipynb").read_bytes()
    (stage / "cut.ipynb").write_bytes(whole[: len(whole) // 2])  # cut short
    (stage / ".a.ipynb.x1y2.ipynb").write_bytes(whole[:10])  # the runner's temporary notebook
    messages = []
    written = render_reports(tmp_path / "notebooks", tmp_path / "reports", log=messages.append)
    assert len(messages) == 1 and "cut.ipynb" in messages[0] and "not a readable notebook" in messages[0]
    assert [p.relative_to(tmp_path / "reports").as_posix() for p in written] == [
        "exp/stage/a.html", "exp/stage/b.failed.html"]
    assert "good-marker" in written[0].read_text()
    assert "FAILED" in written[1].read_text()
    assert 'href="a.html"' in (tmp_path / "reports/exp/stage/index.html").read_text()


@needs_browser
def test_page_and_index_open_offline(rendered, lab_browser):  # noqa: F811
    page = check_page_offline(lab_browser, rendered["page"])
    assert page["figures"] == page["plotly_divs"] == 3 and page["blocked"] == [] and page["errors"] == [], page
    index = check_page_offline(lab_browser, rendered["tmp"] / "reports/index.html")
    assert index["blocked"] == [] and index["errors"] == [], index
    alone = check_page_offline(lab_browser, rendered["tmp"] / "reports_sc/exp/stage/dataset-fmow.html")
    assert alone["figures"] == 3 and alone["blocked"] == [], alone


@needs_browser
def test_code_button_hides_and_shows_code(rendered, lab_browser):  # noqa: F811
    context = lab_browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(rendered["page"].as_uri())
        code = tab.locator(".jp-CodeCell:not(.celltag_parameters) .jp-Cell-inputWrapper").first
        params = tab.locator(".jp-CodeCell.celltag_parameters .jp-Cell-inputWrapper")
        assert code.is_visible() and params.is_visible()
        tab.locator(".clipdg-nav button").click()
        assert not code.is_visible() and params.is_visible()  # the parameters actually used stay
        tab.locator(".clipdg-nav button").click()
        assert code.is_visible()
    finally:
        context.close()


@pytest.fixture(scope="module")
def lab_root(rendered, tmp_path_factory):
    """The server shows the executed notebook of `rendered` (never trusted: papermill wrote it)."""
    import shutil

    from browser import copy_project
    root = copy_project(tmp_path_factory.mktemp("lab_root"), notebooks=False)
    shutil.copy2(rendered["tmp"] / "outputs/notebooks/exp/stage/dataset-fmow.ipynb", root / "outputs/executed.ipynb")
    return root


@pytest.mark.slow
@needs_browser
@pytest.mark.timeout(600)
def test_executed_notebook_figures_draw_untrusted_in_lab(lab_server, lab_browser):  # noqa: F811
    """plots.show's plotly mimetype draws when the executed notebook is reopened, with no `jupyter trust`."""
    from browser import open_lab, open_in_file_browser, plotly_figures, screenshot

    context = lab_browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        open_lab(page, lab_server)
        panel = open_in_file_browser(page, "outputs/executed.ipynb")
        panel.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=60_000)
        page.wait_for_function("() => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
                               ".js-plotly-plot .main-svg').length >= 3", timeout=60_000)
        assert plotly_figures(panel) == 3  # two plots.show figures and the plain fig.show()
        panel.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        screenshot(page, "lab_executed_untrusted_plots_show")
    finally:
        context.close()
