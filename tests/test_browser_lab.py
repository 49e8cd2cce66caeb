"""JupyterLab in a real (headless) Chromium: Run All, no errors, plotly figures and widgets draw.

The harness (tests/browser.py) is proven on small notebooks this module writes, then used on
notebooks/01_zero_shot.ipynb run with no parameters over a small offline default.
Screenshots land in outputs/screenshots/ (git-ignored).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from browser import lab_browser, lab_page, lab_root, lab_server  # noqa: F401 (fixtures)
from browser import (check_page_offline, close_current_tab, errors_on_page, image_fingerprint, needs_browser, plotly_figures,
                     open_in_file_browser, run_all_cells, screenshot, wait_for_kernel_idle, widgets_rendered)
from browser import api, click_menu, copy_project, lab_environment, open_lab, start_lab

pytestmark = [pytest.mark.slow, needs_browser, pytest.mark.timeout(900)]

PLOTLY_CELL = """\
import plotly.graph_objects as go
from IPython.display import HTML, display
fig = go.Figure(go.Bar(x=["ID", "OOD val", "OOD test"], y=[0.71, 0.52, 0.48]))
fig.update_layout(title="harness check: accuracy per split", height=320)
display(HTML(fig.to_html(include_plotlyjs=True, full_html=False)))
"""

WIDGET_CELL = """\
import io
import ipywidgets as W
from PIL import Image

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 170, 60)}

def png(name):
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), COLOURS[name]).save(buf, format="png")
    return buf.getvalue()

dropdown = W.Dropdown(options=list(COLOURS), value="red", description="colour")
image = W.Image(value=png("red"), format="png", width=96, height=96)
dropdown.observe(lambda change: setattr(image, "value", png(change["new"])), names="value")
W.VBox([dropdown, image])
"""

WHERE_CELL = """\
import os
from clipdg_nb.paths import project_root
print("cwd", os.getcwd())
print("root", project_root())
"""


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_run_all_draws_figures_and_live_widgets(lab_page, lab_root):
    write_notebook(lab_root / "notebooks" / "harness_check.ipynb", PLOTLY_CELL, WIDGET_CELL, WHERE_CELL)
    page = lab_page
    screenshot(page, "lab_01_file_browser")
    ran = run_all_cells(page, "notebooks/harness_check.ipynb")
    assert ran["executed"] == ran["code_cells"] == 3, ran
    assert errors_on_page(page) == []

    page.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=30_000)
    assert plotly_figures(page) == 1
    assert widgets_rendered(page) >= 1
    assert page.locator(".widget-vbox").count() >= 1

    # the kernel started in the notebook's folder and found the (temporary) project root
    text = page.locator(".jp-OutputArea-output").last.inner_text()
    assert f"cwd {lab_root / 'notebooks'}" in text
    assert f"root {lab_root}" in text

    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    screenshot(page, "lab_02_run_all_plotly")
    img = page.locator(".widget-image").first
    img.scroll_into_view_if_needed()
    before = image_fingerprint(img)
    screenshot(page, "lab_03_widget_red")
    page.locator(".widget-dropdown select").first.select_option("blue")
    page.wait_for_function("src => document.querySelector('.widget-image').src !== src", arg=before["src"])
    page.wait_for_timeout(200)  # let the new blob decode
    after = image_fingerprint(img)
    assert after["src"] != before["src"]
    assert after["pixels"] != before["pixels"]
    screenshot(page, "lab_04_widget_blue")
    assert errors_on_page(page) == []


def test_errors_on_page_sees_a_failing_cell(lab_page, lab_root):
    """The error check is not vacuous: a traceback is found and Run All stops at it."""
    write_notebook(lab_root / "notebooks" / "failing.ipynb", "x = 1", "1 / 0", "print('never runs')")
    ran = run_all_cells(lab_page, "notebooks/failing.ipynb")
    assert ran["executed"] == 2 and ran["code_cells"] == 3, ran
    errors = errors_on_page(lab_page)
    assert len(errors) == 1 and "ZeroDivisionError" in errors[0]
    screenshot(lab_page, "lab_05_error_found")
    again = run_all_cells(lab_page, "notebooks/failing.ipynb")  # stored prompts are cleared first
    assert again["executed"] == 2, again
    assert len(errors_on_page(lab_page)) == 1


BUNDLE_CELL = """\
import json
from IPython.display import display
fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
fig.update_layout(title="plotly mimetype + html fallback", height=300)
display({"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
         "text/html": fig.to_html(include_plotlyjs=False, full_html=False)}, raw=True)
"""


def _figures_per_cell(page) -> list[int]:
    return page.evaluate("""() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')]
        .map(c => new Set([...c.querySelectorAll('.js-plotly-plot .main-svg, .plot-container .main-svg')]
                          .map(e => e.closest('.js-plotly-plot, .plot-container'))).size)""")


def test_executed_notebook_draws_once_trusted(lab_page, lab_root, lab_server):
    """A papermill output's HTML+script figures stay blank (untrusted) until `jupyter trust` signs it;
    plotly's own mimetype (application/vnd.plotly.v1+json, drawn by the jupyterlab-plotly
    extension) draws either way.

    The signature goes to nbsignatures.db in the Jupyter data dir (here the server's
    JUPYTER_DATA_DIR; by default ~/.local/share/jupyter, even in a venv), so `jupyter trust` must
    see the same data dir as the server that opens the notebook.
    """
    source = write_notebook(lab_root / "notebooks" / "to_execute.ipynb", PLOTLY_CELL, BUNDLE_CELL)
    executed = lab_root / "outputs" / "executed.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(source), str(executed), "--kernel", "python3",
                    "--cwd", str(source.parent), "--no-progress-bar"], env=lab_server.env, check=True,
                   capture_output=True, timeout=180)

    open_in_file_browser(lab_page, "outputs/executed.ipynb")
    wait_for_kernel_idle(lab_page)
    lab_page.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=30_000)
    lab_page.wait_for_timeout(1000)
    assert _figures_per_cell(lab_page) == [0, 1]  # untrusted: scripts do not run, the mimetype draws
    screenshot(lab_page, "lab_06_executed_untrusted")
    close_current_tab(lab_page)

    signatures = Path(lab_server.env["JUPYTER_DATA_DIR"]) / "nbsignatures.db"
    lab_server.jupyter("trust", str(executed))
    assert signatures.is_file()
    open_in_file_browser(lab_page, "outputs/executed.ipynb")
    first_cell = lab_page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").first
    first_cell.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=30_000)
    assert _figures_per_cell(lab_page) == [1, 1]
    screenshot(lab_page, "lab_07_executed_trusted")


def prepare_offline_default(root: Path) -> None:
    """What `make demo` leaves for the notebooks, small: synthetic data in outputs/data and tiny CLIP
    weights where `clipdg pretrain-tiny` writes them (random ones here: quick)."""
    from conftest import SMALL

    from clipdg_nb.config import TINY_CLIP_WEIGHTS
    from clipdg_nb.models import load_clip, save_weights
    from clipdg_nb.demo.synthetic import write_synthetic

    write_synthetic(root / "outputs" / "data", cfg=SMALL)
    save_weights(load_clip("clipdg-tiny-vit").model, root / TINY_CLIP_WEIGHTS)


def test_zero_shot_notebook_runs_in_lab(lab_page, lab_root):
    """notebooks/01_zero_shot.ipynb with no parameters, opened from the file browser: Run All runs
    the offline default with no error, the per-group figure draws, the failure browser shows the
    filter the notebook set (split 'test'), and choosing another split shows another image."""
    prepare_offline_default(lab_root)
    page = lab_page
    ran = run_all_cells(page, "notebooks/01_zero_shot.ipynb", timeout=240)
    assert errors_on_page(page) == [], ran
    assert ran["executed"] == ran["code_cells"], ran
    page.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=30_000)
    assert plotly_figures(page) >= 1
    figure = page.locator(".js-plotly-plot").first
    assert figure.locator(".xtick").count() > 0 and "accuracy per region" in figure.inner_text()
    figure.scroll_into_view_if_needed()
    screenshot(page, "lab_01_run_all")

    assert widgets_rendered(page) >= 1
    split = page.locator(".widget-dropdown select").first
    assert split.input_value() == "OOD test"  # the control shows the filter set in the notebook, by its readable name
    img = page.locator(".widget-image").first
    img.scroll_into_view_if_needed()
    before = image_fingerprint(img)
    split.select_option("ID test")
    page.wait_for_function("src => document.querySelector('.widget-image').src !== src", arg=before["src"])
    page.wait_for_timeout(300)  # let the new image decode
    after = image_fingerprint(img)
    assert after["src"] != before["src"] and after["pixels"] != before["pixels"]
    page.locator(".widget-vbox").first.scroll_into_view_if_needed()
    screenshot(page, "lab_01_widget_after_filter")
    assert errors_on_page(page) == []
    assert ran["seconds"] < 90, ran


def test_report_page_offline(lab_browser, tmp_path):
    """check_page_offline: a self-contained page draws with no network; a CDN-dependent one does not."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
    inline, cdn = tmp_path / "inline.html", tmp_path / "cdn.html"
    fig.write_html(inline, include_plotlyjs=True)
    fig.write_html(cdn, include_plotlyjs="cdn")
    ok = check_page_offline(lab_browser, inline, screenshot_name="report_offline_inline")
    assert ok["figures"] == ok["plotly_divs"] == 1 and ok["blocked"] == [], ok
    bad = check_page_offline(lab_browser, cdn)
    assert bad["plotly_divs"] == 1 and bad["figures"] == 0, bad
    assert any("cdn.plot.ly" in u for u in bad["blocked"]), bad


def test_make_lab_opens_notebooks_with_the_project_kernel(lab_browser, tmp_path_factory):
    """The server options `make lab` passes (clipdg_nb.pipeline.lab): 04_analysis, whose file names
    python3, opens with "Python (clipdg-nb)"; saving it writes python3 back (papermill runs it anywhere)."""
    from clipdg_nb.pipeline.lab import KERNEL_DISPLAY_NAME, KERNEL_NAME, SERVER_OPTIONS

    root = copy_project(tmp_path_factory.mktemp("make_lab_root"))
    state = tmp_path_factory.mktemp("make_lab_state")
    # as `make lab` installs it, but into this server's own data dir instead of the shared venv
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", KERNEL_NAME, "--display-name",
                    KERNEL_DISPLAY_NAME], env=lab_environment(root, state), check=True, capture_output=True)
    with start_lab(root, state, extra_args=SERVER_OPTIONS) as server:
        specs = api(server, "api/kernelspecs")
        assert specs["default"] == KERNEL_NAME and set(specs["kernelspecs"]) == {KERNEL_NAME}
        context = lab_browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        try:
            open_lab(page, server)
            open_in_file_browser(page, "notebooks/04_analysis.ipynb")
            wait_for_kernel_idle(page)
            toolbar = page.locator(".jp-NotebookPanel:visible .jp-Toolbar-kernelName")
            assert toolbar.inner_text().strip() == KERNEL_DISPLAY_NAME
            assert [s["kernel"]["name"] for s in api(server, "api/sessions")] == [KERNEL_NAME]
            screenshot(page, "lab_06_make_lab_kernel")
            path = root / "notebooks" / "04_analysis.ipynb"
            before = path.stat().st_mtime_ns
            click_menu(page, "File", "Save Notebook")
            page.wait_for_function("() => !document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-mod-dirty')")
            deadline = time.monotonic() + 30
            while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
                time.sleep(0.2)
            assert path.stat().st_mtime_ns != before, "the notebook was not saved"
            while True:  # the server writes the file in place: read it once the write is whole
                try:
                    saved = nbformat.read(str(path), as_version=4)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert saved.metadata["kernelspec"]["name"] == "python3"
        finally:
            context.close()


BROWSER_CELL = """\
import numpy as np
import pandas as pd
from clipdg_nb.analysis.widgets import FailureBrowser

names = [f"species_{i:03d}" for i in range(182)]
n = 364
frame = pd.DataFrame({"idx": np.arange(n), "y_true": np.arange(n) % 182, "y_pred": (np.arange(n) * 7 + 1) % 182,
                      "p_top1": np.linspace(0.9, 0.1, n), "split": ["id_test"] * 182 + ["test"] * 182,
                      "location": [str(i % 12) for i in range(n)]})
colour = lambda i: np.full((8, 8, 3), (40 + i % 200, 90, 160), np.uint8)
browser = FailureBrowser(frame, names, get_image=colour, thumb_size=96)
browser
"""


def test_failure_browser_search_box_and_no_match_message(lab_page, lab_root):
    """The failure browser live: a class found by typing in its search box, the OOD caption, and
    the message (no broken image) when the filters match nothing."""
    write_notebook(lab_root / "notebooks" / "browser_check.ipynb", BROWSER_CELL)
    page = lab_page
    ran = run_all_cells(page, "notebooks/browser_check.ipynb")
    assert ran["executed"] == 1 and errors_on_page(page) == []
    panel = page.locator(".jp-NotebookPanel:visible")
    panel.locator(".widget-image").first.wait_for(state="visible")
    location = panel.locator(".widget-dropdown", has_text="location").locator("select")
    assert location.locator("option").all_inner_texts()[:4] == ["(all)", "0", "1", "2"]  # numbers, not text order
    boxes = panel.locator(".widget-text", has=page.locator("datalist"))  # a Combobox: a text box + datalist
    assert boxes.count() == 2 and boxes.first.locator("label").inner_text() == "true class"
    search = boxes.first.locator("input")
    assert search.get_attribute("placeholder") == "type to search 182 classes"
    search.fill("species_150")
    search.press("Enter")
    panel.locator(".widget-label", has_text="1 / 2").wait_for(state="visible")
    assert "ID test, location 6" in panel.locator(".widget-html", has_text="#150").inner_text()  # idx < 182: ID test
    panel.locator("button", has_text="next >").click()
    panel.locator(".widget-html", has_text="#332").wait_for(state="visible")
    assert "OOD test, location 8" in panel.locator(".widget-html", has_text="#332").inner_text()
    screenshot(page, "lab_07_failure_browser_search")
    location.select_option("0")  # species 150 never sits at location 0 (150 % 12 = 6, 332 % 12 = 8)
    message = panel.locator(".widget-html", has_text="no example matches these filters")
    message.wait_for(state="visible")
    assert "(location 0, true class species_150, errors only)" in message.inner_text()
    assert not panel.locator(".widget-image").first.is_visible()  # no empty, broken image
    screenshot(page, "lab_08_failure_browser_no_match")
    assert errors_on_page(page) == []
