"""Reports: executed notebook -> HTML that keeps the figures and opens with no network."""
from __future__ import annotations

import re
import shutil
import subprocess

import nbformat
import papermill
import pytest
from plotly.offline import get_plotlyjs

from clipdg_nb.pipeline.report import inline_plotly_outputs, render_reports

CODE = '''import numpy as np
import plotly.graph_objects as go
from PIL import Image
import pandas as pd
from clipdg_nb import plots  # code-marker-42

plots.show(go.Figure(go.Bar(x=["north", "south"], y=[11.5, 22.25], name="trace-alpha")))
plots.show(go.Figure(go.Scatter(x=[1, 2, 3], y=[3.5, 1.25, 2.0], name="trace-beta")))
go.Figure(go.Bar(x=["x"], y=[7.75], name="trace-gamma")).show()  # plotly's own mimetype only
failures = pd.DataFrame({"idx": [3], "y_true": [0], "y_pred": [1], "p_top1": [0.875], "region": ["Asia"]})
plots.show_gallery(failures, ["cat", "dog"], lambda i: Image.new("RGB", (8, 8), (200, 10, 10)))
import ipywidgets
ipywidgets.IntSlider(description="knob")
'''


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A report"), nbformat.v4.new_code_cell(CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp / "src.ipynb"
    nbformat.write(nb, str(src))
    executed = tmp / "notebooks/exp/stage/point.ipynb"
    executed.parent.mkdir(parents=True)
    papermill.execute_notebook(str(src), str(executed), kernel_name="python3", progress_bar=False, cwd=str(tmp))
    with_code = render_reports(tmp / "notebooks", tmp / "reports", experiment="exp")
    no_code = render_reports(tmp / "notebooks", tmp / "reports_nocode", no_code=True)
    return tmp, with_code[0].read_text(), no_code[0].read_text()


def test_figures_data_and_plotlyjs_are_inline(rendered):
    tmp, html, _ = rendered
    assert (tmp / "reports/exp/stage/point.html").is_file()
    for value in ("trace-alpha", "22.25", "trace-beta", "1.25", "trace-gamma", "7.75"):
        assert value in html
    assert html.count(get_plotlyjs()[:300]) == 1  # plotly.js itself, once
    assert html.count("Plotly.newPlot") >= 3


def test_opens_with_no_network(rendered):
    _, html, _ = rendered
    assert '<script src="http' not in html
    assert not re.search(r"<script[^>]*\ssrc=[\"']?(https?:)?//", html)
    assert not re.search(r"<link[^>]*href=[\"']?(https?:)?//", html)
    assert "data:image/png;base64," in html and "dog" in html and "88%" in html  # the static gallery
    assert "IntSlider(" not in html and "live kernel" in html  # widgets: a note, not a dead repr


def test_no_code_hides_inputs_and_index_links(rendered):
    tmp, html, hidden = rendered
    assert "code-marker-42" in html and "code-marker-42" not in hidden
    assert "trace-alpha" in hidden
    assert 'href="exp/stage/point.html"' in (tmp / "reports/index.html").read_text()


def test_plotly_only_outputs_are_converted():
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output("display_data", data={"application/vnd.plotly.v1+json": {
        "data": [{"type": "bar", "x": ["a"], "y": [1.5]}], "layout": {}}})
    nb.cells = [nbformat.v4.new_code_cell("fig.show()", outputs=[out])]
    assert inline_plotly_outputs(nb) == 1
    assert "Plotly.newPlot" in nb.cells[0].outputs[0].data["text/html"]


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
    whole = (stage / "a.ipynb").read_bytes()
    (stage / "cut.ipynb").write_bytes(whole[: len(whole) // 2])  # cut short
    (stage / ".a.ipynb.x1y2.ipynb").write_bytes(whole[:10])  # the runner's temporary notebook
    with pytest.warns(UserWarning, match=r"cut\.ipynb is not a readable notebook"):
        written = render_reports(tmp_path / "notebooks", tmp_path / "reports")
    assert [p.relative_to(tmp_path / "reports").as_posix() for p in written] == [
        "exp/stage/a.html", "exp/stage/b.failed.html"]
    assert "good-marker" in written[0].read_text()
    assert "exp / stage / b (FAILED)" in written[1].read_text()
    assert "a.html" in (tmp_path / "reports/index.html").read_text()


CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_headless_chromium_draws_the_figures_offline(rendered):
    tmp, _, _ = rendered
    page = tmp / "reports/exp/stage/point.html"
    # an unreachable proxy stands for "no network": everything the page needs is inline
    dom = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--proxy-server=127.0.0.1:9",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="main-svg"') >= 3  # plotly drew each figure as SVG
