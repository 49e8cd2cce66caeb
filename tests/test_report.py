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

from clipdg_nb import paths, runs
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
    paths.write_json(stage / "dataset-fmow.done.json", {"parameters": given, "run_dirs": [f"outputs/runs/exp/{RUN_ID}"]})
    # a failed point: its notebook (with the error) and its marker
    bad = nbformat.v4.new_notebook()
    bad.cells = [nbformat.v4.new_markdown_cell("# A report"), nbformat.v4.new_code_cell("1 / 0", outputs=[
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])])]
    nbformat.write(bad, str(stage / "dataset-iwildcam.ipynb"))
    paths.write_json(stage / "dataset-iwildcam.failed.json", {"parameters": {**given, "dataset": "iwildcam"},
                                                             "ename": "ZeroDivisionError", "evalue": "division by zero"})
    # an analysis-like point: it writes no run, it reads the experiment's
    (tmp / "outputs/notebooks/exp/analysis").mkdir()
    reader = nbformat.v4.new_notebook()
    reader.cells = [nbformat.v4.new_markdown_cell("# Analysis")]
    nbformat.write(reader, str(tmp / "outputs/notebooks/exp/analysis/dataset-fmow.ipynb"))
    paths.write_json(tmp / "outputs/notebooks/exp/analysis/dataset-fmow.done.json", {
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
    assert sorted(p.name for p in (tmp / "reports").rglob("*.js")) == ["clipdg-vendor.js", "plotly.min.js", "search-index.js"]


def test_self_contained_has_plotlyjs_inline_once(rendered):
    alone = rendered["alone"]
    assert alone.count(PJS) == 1 and "plotly.min.js" not in alone
    assert "trace-gamma" in alone
    assert not (rendered["tmp"] / "reports_sc/plotly.min.js").exists()
    summary = (rendered["tmp"] / "reports_sc/index.html").read_text()
    assert "plotly-graph-div" in summary and summary.count(PJS) == 1  # its figures draw from the one file too


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
    assert "<tr><td>finetune</td><td>0.5</td><td>best (reported)</td><td>0.0001</td>" in stage
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
    stage_page = (tmp_path / "reports/exp/stage/index.html").read_text()
    assert 'href="a.html"' in stage_page
    assert stage_page.count('<tr class="failed">') == 1  # point b once: its failed execution's page, not twice
    assert "1 failed point(s)" in (tmp_path / "reports/index.html").read_text()


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


# ---------------------------------------------------------------------------------------------
# The site of an experiment, built from run records (no notebook is executed: fast)
# ---------------------------------------------------------------------------------------------

SHIFT = {"id_val": 0.0, "id_test": 0.0, "val": -0.2, "test": -0.25}  # OOD below ID by construction
SITE_SEEDS = {"fmow": (0, 1, 2), "iwildcam": (0,)}  # iWildCam: one seed, so no interval


def _site_metrics(acc: float) -> dict:
    return {s: {"acc_avg": acc + d, "acc_worst_region": acc + d - 0.1, "F1-macro_all": (acc + d) / 2}
            for s, d in SHIFT.items()}


def _site_run(tmp, output_dir, dataset, method, fraction, seed, variants, headline, lr=1e-3, **extra):
    lr = None if method == "zeroshot" else lr
    run_id = f"{dataset}-{method}-f{fraction:g}-s{seed}-{'abl' if 'ablation' in output_dir else 'cafe'}"
    run_id += f"-lr{lr:g}" if "soups" in output_dir else ""
    params = {"experiment": "demo", "dataset": dataset, "model": "clipdg-tiny-vit", "root_dir": str(tmp / "outputs/data"),
              "pretrained": "outputs/cache/pretrain/tiny-clip.safetensors", "output_dir": output_dir, "epochs": 4,
              "eval_splits": ["id_val", "id_test", "val", "test"], "seed": seed, "lr": lr}
    record = dict(run_id=run_id, experiment="demo", dataset=dataset, method=method, fraction=fraction, seed=seed, lr=lr,
                  root_dir=str(tmp / "outputs/data"), params=params, metrics=variants[headline],
                  selection={"split": "id_val", "metric": "acc_avg", "variant": headline})
    if len(variants) > 1:
        record["variants"] = variants
    record.update(extra)
    folder = f"{output_dir}/demo/{run_id}"
    runs.Run(tmp / folder).finish(record)
    return folder


def _site_point(tmp, stage, title, values, run_dirs):
    from clipdg_nb.pipeline.experiment import point_name

    folder = tmp / "outputs/notebooks/demo" / stage
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nA point of the fake demo.")]
    nbformat.write(nb, str(folder / f"{point_name(values)}.ipynb"))
    runs.write_json(folder / f"{point_name(values)}.done.json", {"parameters": {"experiment": "demo", **values},
                                                                  "run_dirs": run_dirs})


def _calibration(seed, variants) -> dict:
    """ECE 0.10 + 0.01 * seed before temperature scaling; after it, 0.03 + 0.001 * seed lower on ID
    test and 0.02 + 0.001 * seed higher on OOD test."""
    ece = 0.10 + 0.01 * seed
    after = {"id_test": ece - 0.03 - 0.001 * seed, "test": ece + 0.02 + 0.001 * seed}
    return {v: {s: {"ece": ece, "nll": 1.5, "ece_ts": after[s], "nll_ts": 1.4, "temperature": 1.3,
                    "temperature_split": "id_val"} for s in after} for v in variants}


def _site_soups(tmp, seed) -> list[str]:
    """One seed of the soups stage: fine-tuned at lr 1e-3 and 1e-4 (better on ID val) with kept
    weights, and a soup record of both whose uniform soup is 0.02 + 0.001 * seed above the best
    single run (lr 1e-4, best epoch) on every split."""
    folders, digests = [], {}
    for lr, dv in ((1e-3, 0.0), (1e-4, 0.05)):
        acc = 0.52 + 0.01 * seed + dv
        variants = {"best": _site_metrics(acc), "last": _site_metrics(acc - 0.01), "swa": _site_metrics(acc),
                    "ema": _site_metrics(acc), "wise_ft_0.5": _site_metrics(acc - 0.005)}
        folders.append(_site_run(tmp, "outputs/runs/soups", "fmow", "finetune", 0.1, seed, variants, "best", lr=lr,
                                 kept_weights={"sha256": f"digest-{lr:g}-{seed}"}, calibration=_calibration(seed, variants)))
        digests[folders[-1].rsplit("/", 1)[1]] = f"digest-{lr:g}-{seed}"
    best = 0.52 + 0.01 * seed + 0.05
    soup_variants = {"uniform_soup": _site_metrics(best + 0.02 + 0.001 * seed), "greedy_soup": _site_metrics(best)}
    soup_id = f"fmow-finetune-f0.1-soup-s{seed}"
    runs.Run(tmp / "outputs/runs/soups/demo/soups" / soup_id).finish(dict(
        run_id=soup_id, experiment="demo", kind="soup", dataset="fmow", method="finetune", fraction=0.1, seed=seed,
        lr=None, params={"output_dir": "outputs/runs/soups"}, identity={"ingredients": digests},
        metrics=soup_variants["greedy_soup"], variants=soup_variants, calibration=_calibration(seed, soup_variants),
        selection={"split": "id_val", "metric": "acc_avg", "variant": "greedy_soup"},
        soups={"uniform_soup": {"ingredients": list(digests)}, "greedy_soup": {"ingredients": list(digests)[1:]}}))
    return folders + [f"outputs/runs/soups/demo/soups/{soup_id}"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A fake `demo`: synthetic-data markers, a tiny model, zero-shot, a sweep (finetune with best /
    last / SWA weights, vision-only 0.1 + 0.002 * seed below it on every split), an ablation run with
    WiSE-FT variants in its own folder under a sweep run's id; rendered to outputs/reports."""
    from clipdg_nb.data import DATASETS
    from clipdg_nb.pipeline.report import render_reports

    tmp = tmp_path_factory.mktemp("site")
    for ds in DATASETS:  # what `clipdg synth` leaves in each dataset folder
        (tmp / "outputs/data" / DATASETS[ds].folder).mkdir(parents=True)
        (tmp / "outputs/data" / DATASETS[ds].folder / "SYNTHETIC.json").write_text('{"generator": "clipdg_nb.synthetic"}')
    for ds in SITE_SEEDS:  # the demo's two datasets
        zs = _site_run(tmp, "outputs/runs", ds, "zeroshot", 0.0, 0, {"zeroshot": _site_metrics(0.3)}, "zeroshot")
        _site_point(tmp, "zero_shot", "01 · Zero-shot", {"dataset": ds}, [zs])
        for fraction in (0.1, 1.0):
            for seed in SITE_SEEDS[ds]:
                acc = 0.5 + 0.2 * fraction + 0.01 * seed
                ft = _site_run(tmp, "outputs/runs", ds, "finetune", fraction, seed,
                               {"best": _site_metrics(acc), "last": _site_metrics(acc - 0.02),
                                "swa": _site_metrics(acc + 0.01 + 0.001 * seed)}, "best")
                vo = _site_run(tmp, "outputs/runs", ds, "vision_only", fraction, seed,
                               {"best": _site_metrics(acc - 0.1 - 0.002 * seed)}, "best")
                _site_point(tmp, "sweep", "02 · Few-shot sweep", {"dataset": ds, "fraction": fraction, "seed": seed},
                            [ft, vo])
    wise = {f"wise_ft_{a}": _site_metrics(0.3 + 0.4 * a + 0.1 * a * (1 - a)) for a in (0.0, 0.5)}
    abl = _site_run(tmp, "outputs/runs/ablation", "fmow", "finetune", 1.0, 0,
                    {"best": _site_metrics(0.7), "last": _site_metrics(0.7), "swa": _site_metrics(0.72),
                     "ema": _site_metrics(0.71), **wise}, "best")
    _site_point(tmp, "swa_ablation", "03 · SWA ablation", {"dataset": "fmow", "fraction": 1.0, "seed": 0}, [abl])
    for seed in SITE_SEEDS["fmow"]:  # the soups stage, in its own folder: two lrs a seed, and their soups
        _site_point(tmp, "soups", "05 · Model soups", {"dataset": "fmow", "seed": seed}, _site_soups(tmp, seed))
    (tmp / "parameters").mkdir()
    (tmp / "parameters/demo.yaml").write_text("experiment: demo\ndescription: A fake demo for the report's tests.\n")
    out = tmp / "outputs/reports"
    written = render_reports(tmp / "outputs/notebooks", out, root=tmp)
    return {"tmp": tmp, "out": out, "written": written, "index": (out / "index.html").read_text()}


def _text(html_text: str) -> str:
    """A page's visible text, roughly (scripts and styles out, tags out, whitespace collapsed)."""
    import html as html_lib

    body = re.sub(r"<(script|style)\b.*?</\1>", " ", html_text, flags=re.S)
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def test_summary_opens_on_findings_with_plain_verdicts(site):
    index, text = site["index"], _text(site["index"])
    assert "demo: what the study found" in text and "A fake demo for the report's tests." in text
    assert "Synthetic data, tiny model: not the paper's numbers." in text  # the banner
    assert "clipdg-tiny-vit" in text and "SYNTHETIC.json" in text
    # fmow: finetune - vision_only on OOD test at 100 %: differences 0.100, 0.102, 0.104 over seeds 0-2:
    # mean 0.102, std 0.002, t(0.975, 2) = 4.303 -> half width 4.303 * 0.002 / sqrt(3) = 0.00497
    row = re.search(r"<tr><td>finetune - vision_only on test, fraction 1</td>.*?</tr>", index).group(0)
    assert "+0.102 [+0.097, +0.107]" in row and ">holds<" in row
    # iwildcam (headline F1-macro_all, half the accuracy here: a difference of 0.05) has one seed: no
    # interval, and no verdict either way
    one = re.findall(r"<tr><td>finetune - vision_only on test, fraction 1</td>.*?</tr>", index)[1]
    assert "+0.050, interval n/a (1 seed)" in one and ">inconclusive<" in one
    assert not re.search(r"\bnan\b", text, re.I) and ">True<" not in index and ">None<" not in index
    assert "13 runs · 3 seed(s)" in text  # fmow: 1 zero-shot + 2 fractions x 3 seeds x 2 methods; the ablation apart
    for name in ("runs", "metrics", "calibration", "findings"):
        for link in (f"{name}.parquet", f"{name}.csv.gz"):
            assert f'<a href="{link}" download>' in index
    for label in ("git commit", "library versions", "hardware", "runs made", "report rendered"):
        assert f"<td>{label}</td>" in index
    assert re.search(r"<td>hardware</td><td>(CPU only|GPU: )", index)
    # the records name where they computed: this CPU, and no GPU (this process never initialised CUDA)
    import os

    import torch
    record = json.loads(next((site["tmp"] / "outputs/runs/demo").glob("*/result.json")).read_text())
    assert record["hardware"]["cpu_count"] == os.cpu_count() and record["hardware"]["cpu"]
    assert record["hardware"]["gpu"] is None or torch.cuda.is_initialized()


def test_summary_key_figures_have_captions(site):
    index = site["index"]
    figures = re.findall(r'<figure class="clipdg-figure">(.*?)</figure>', index, re.S)
    assert len(figures) == 16  # eight per dataset
    assert all("What to look for.</b>" in f for f in figures)
    drawn = [f for f in figures if "plotly-graph-div" in f]
    assert len(drawn) == 13  # iwildcam has no WiSE-FT run, no soups stage, no calibration: its panels say why
    assert "not drawn: it needs a run of this dataset with WiSE-FT variants (the swa_ablation stage" in index
    assert "not drawn: it needs the soups stage (05_model_soups)" in index
    for title in ("Weight averaging across its kinds, paired by seed", "Calibration: ECE after minus before temperature"):
        assert sum(title in f and "plotly-graph-div" in f for f in figures) == 1, title  # fmow's
    wise = next(f for f in figures if "WiSE-FT: interpolating" in f)
    assert "WiSE-FT α=0.5" not in wise  # hover texts are in figure JSON; the curve's labels are α=...
    assert '"α=0.5"' in wise.replace("\\u03b1", "α")
    assert index.count('src="plotly.min.js"') == 1 and (site["out"] / "plotly.min.js").is_file()


def _finding(index: str, question: str) -> str:
    return re.search(rf"<tr><td>{re.escape(question)}</td>.*?</tr>", index).group(0)


def test_summary_answers_weight_averaging_and_calibration(site):
    index = site["index"]
    assert "fmow: weight averaging</h3>" in index and "fmow: calibration</h3>" in index
    # uniform soup minus the best single run (lr 1e-4, chosen on ID val), OOD test: 0.020, 0.021, 0.022 over
    # seeds -> mean 0.021, std 0.001, half width 4.303 * 0.001 / sqrt(3) = 0.0025
    row = _finding(index, "uniform soup - best single run on test (acc_worst_region), fraction 0.1 (paired, 95%)")
    assert "+0.021 [+0.019, +0.023]" in row and ">holds<" in row
    row = _finding(index, "greedy soup - best single run on test (acc_worst_region), fraction 0.1 (paired, 95%)")
    assert "+0.000" in row and ">inconclusive<" in row  # the greedy soup equals the best run: no spread
    for variant in ("last epoch", "SWA", "EMA", "WiSE-FT α=0.5"):
        assert f"<tr><td>{variant} - best single run on id_test (acc_avg), fraction 0.1" in index
    # ECE 0.10 + 0.01 * seed; temperature scaling lowers it by 0.03 + 0.001 * seed on ID test, raises it by
    # 0.02 + 0.001 * seed on OOD test: paired means -0.031 / +0.021, half width 0.0025
    row = _finding(index, "temperature scaling lowers the ECE of best single run on id_test, fraction 0.1 (paired, 95%)")
    assert "0.110 -&gt; 0.079: -0.031 [-0.033, -0.029]" in row and ">holds<" in row
    row = _finding(index, "temperature scaling lowers the ECE of uniform soup on test, fraction 0.1 (paired, 95%)")
    assert "0.110 -&gt; 0.131: +0.021 [+0.019, +0.023]" in row and ">does not hold<" in row
    # iwildcam has neither a soups stage nor calibrated runs: said, not left out
    assert "<tr><td>weight averaging: it needs the soups stage (05_model_soups)" in index
    assert "<tr><td>calibration: it needs runs that record calibration" in index


def test_no_banner_for_real_data_and_a_full_model(rendered):
    assert "not the paper's numbers" not in rendered["index"]


def test_downloads_hold_every_row_and_setting(site):
    import pandas as pd

    out = site["out"]
    tables = {name: pd.read_parquet(out / f"{name}.parquet") for name in ("runs", "metrics", "calibration", "findings")}
    for name, frame in tables.items():  # the gzip CSV holds the same table (an empty cell: NaN in both)
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv.gz"), frame.astype(object).where(frame.notna()),
                                      check_dtype=False, obj=name)
    runs_, metrics, calibration = tables["runs"], tables["metrics"], tables["calibration"]
    # 18 sweep / zero-shot runs, the ablation's, the soups stage's 6 runs and 3 soups: one row each, one key
    assert len(runs_) == 18 + 1 + 6 + 3 and runs_["run_dir"].is_unique
    assert (runs_["kind"] == "soup").sum() == 3
    for column in ("run_dir", "run_id", "kind", "method", "fraction", "seed", "lr", "variant", "model", "epochs",
                   "output_dir", "eval_splits", "git_commit", "select_split", "soups"):
        assert column in runs_.columns, column
    # zero-shot 2 x 1 variant, finetune 8 x 3, vision-only 8 x 1, ablation 1 x 6, soups stage 6 x 5 and 3 x 2;
    # 4 splits x 3 metrics each
    assert len(metrics) == (2 * 1 + 8 * 3 + 8 * 1 + 1 * 6 + 6 * 5 + 3 * 2) * 4 * 3
    assert list(metrics.columns) == ["run_dir", "variant", "split", "metric", "value"]
    wide = metrics.merge(runs_[["run_dir", "dataset", "method", "fraction", "seed", "output_dir"]], on="run_dir")
    swa = wide[(wide["dataset"] == "fmow") & (wide["method"] == "finetune") & (wide["fraction"] == 1.0)
               & (wide["seed"] == 2) & (wide["variant"] == "swa") & (wide["split"] == "test")
               & (wide["metric"] == "acc_avg") & (wide["output_dir"] == "outputs/runs")]
    assert swa["value"].tolist() == pytest.approx([0.5 + 0.2 + 0.02 + 0.01 + 0.002 - 0.25])
    assert (wide["output_dir"] == "outputs/runs/ablation").sum() == 6 * 4 * 3  # kept apart from its twin
    soup = wide[wide["run_dir"] == "outputs/runs/soups/demo/soups/fmow-finetune-f0.1-soup-s2"]
    soup = soup[(soup["variant"] == "uniform_soup") & (soup["split"] == "test") & (soup["metric"] == "acc_worst_region")]
    assert soup["value"].tolist() == pytest.approx([0.52 + 0.02 + 0.05 + 0.02 + 0.002 - 0.25 - 0.1])
    # calibration: every run and soup of the soups stage, each variant, ID and OOD test
    assert len(calibration) == (6 * 5 + 3 * 2) * 2
    for column in ("ece", "nll", "ece_ts", "nll_ts", "temperature", "temperature_split"):
        assert column in calibration.columns, column
    row = calibration[(calibration["run_dir"] == "outputs/runs/soups/demo/soups/fmow-finetune-f0.1-soup-s1")
                      & (calibration["variant"] == "uniform_soup") & (calibration["split"] == "test")]
    assert row[["ece", "ece_ts", "temperature"]].values.ravel().tolist() == pytest.approx([0.11, 0.131, 1.3])
    findings = tables["findings"]
    assert list(findings.columns) == ["experiment", "dataset", "topic", "question", "measured", "verdict", "value", "low",
                                      "high", "n"]
    row = findings[(findings["dataset"] == "fmow") & (findings["question"] == "finetune - vision_only on test, fraction 1")]
    assert row["verdict"].item() == "holds" and row["n"].item() == 3
    assert row[["value", "low", "high"]].values.ravel().tolist() == pytest.approx([0.102, 0.102 - 0.004968, 0.102 + 0.004968],
                                                                                 abs=2e-5)
    assert set(findings["verdict"]) <= {"holds", "does not hold", "inconclusive", "not measured"}
    assert set(findings["topic"]) == {"study", "weight averaging", "calibration"}
    soups = findings[(findings["topic"] == "weight averaging") & findings["question"].str.startswith("uniform soup")]
    assert len(soups) == 2 and set(soups["verdict"]) == {"holds"}
    downloads = (out / "downloads.html").read_text()
    assert '<a href="metrics.parquet" download>' in downloads and f"<td>{len(metrics)}</td>" in downloads


def _search_index(out) -> list[dict]:
    text = (out / "search-index.js").read_text()
    assert text.startswith("window.CLIPDG_SEARCH = ")
    return json.loads(text[len("window.CLIPDG_SEARCH = "):].rstrip().rstrip(";"))


def test_search_index_covers_pages_and_parameters(site):
    pages = _search_index(site["out"])
    urls = {p["url"] for p in pages}
    for page in site["written"]:
        assert page.relative_to(site["out"]).as_posix() in urls
    for stage in ("zero_shot", "sweep", "swa_ablation", "soups"):
        assert f"demo/{stage}/index.html" in urls
    assert {"stages.html", "downloads.html", "index.html#experiment-demo"} <= urls
    point = next(p for p in pages if p["url"] == "demo/sweep/dataset-fmow_fraction-0.1_seed-1.html")
    assert "fraction=0.1" in point["text"] and "seed=1" in point["text"] and "done" in point["text"]
    assert point["title"] == "02 · Few-shot sweep · dataset=fmow, fraction=0.1, seed=1"
    assert "A point of the fake demo." in point["text"]  # the page's text, not only its parameters
    summary = next(p for p in pages if p["url"] == "index.html#experiment-demo")
    for words in ("temperature scaling lowers the ECE", "greedy soup - best single run", "Calibration: ECE after"):
        assert words in summary["text"], words


def test_every_page_has_the_navigation_and_nothing_remote(site):
    out = site["out"]
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 4 + 4 + len(site["written"])  # summary, stages, downloads, docs + a page per stage + points
    for page in pages:
        html_text = page.read_text()
        root = "../../" if len(page.relative_to(out).parts) == 3 else ""
        for href in ("index.html", "stages.html", "downloads.html", "docs.html", "search-index.js", "clipdg-vendor.js"):
            assert f'="{root}{href}"' in html_text, (page, href)
        assert 'class="clipdg-search"' in html_text and "window.CLIPDG_SEARCH" in html_text
        assert not re.search(r"<(script|link)[^>]*\s(src|href)=[\"']?(https?:)?//", html_text), page
    point = (out / "demo/sweep/dataset-fmow_fraction-0.1_seed-1.html").read_text()
    assert 'href="dataset-fmow_fraction-0.1_seed-0.html" rel="prev"' in point
    assert 'href="dataset-fmow_fraction-0.1_seed-2.html" rel="next"' in point
    assert '<a href="index.html">sweep</a>' in point  # its stage's page


def test_docs_page_holds_the_readme_and_every_docs_page(site):
    root = paths.project_root()
    docs = (site["out"] / "docs.html").read_text()
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    assert len(files) > 1 and docs.count('<section id="doc-') == len(files)
    for path in files:
        first = path.read_text().splitlines()[0].lstrip("# ")
        assert f'id="doc-{path.stem.lower()}"' in docs and f"<h1>{first}</h1>" in docs, path
    assert 'href="#doc-methods"' in docs and 'href="docs/methods.md"' not in docs  # a link to its section
    assert '<table class="clipdg-table">' in docs and "Where to change what" in docs


def test_stage_page_groups_runs_by_dataset_method_fraction(site):
    sweep = (site["out"] / "demo/sweep/index.html").read_text()
    assert "fmow: by method and fraction" in sweep and "iwildcam: by method and fraction" in sweep
    # fmow finetune at 100 %, best epoch, ID test acc_avg: 0.70, 0.71, 0.72 -> 0.710 +- 4.303 * 0.01 / sqrt(3)
    row = re.search(r"<tr><td>finetune</td><td>1</td><td>best \(reported\)</td>.*?</tr>", sweep, re.S).group(0)
    assert "0.710 [0.685, 0.735]" in row and "<td>3</td>" in row
    assert all(f'<a href="dataset-fmow_fraction-1_seed-{s}.html">s{s}</a>' in row for s in range(3))
    one = re.findall(r"<tr><td>finetune</td><td>1</td><td>best \(reported\)</td>.*?</tr>", sweep, re.S)[1]
    assert "0.350 [n/a (1 seed)]" in one  # iwildcam (F1-macro_all, half the accuracy here), one seed: no interval


def test_template_files_are_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["clipdg_nb"]
    for path in (p for p in (root / "clipdg_nb/pipeline/templates").rglob("*") if p.is_file()):
        rel = path.relative_to(root / "clipdg_nb").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in pyproject's package-data"


@needs_browser
def test_summary_draws_offline_csv_link_works_search_finds_a_page(site, lab_browser):  # noqa: F811
    from browser import block_network, screenshot

    check = check_page_offline(lab_browser, site["out"] / "index.html", screenshot_name="report_summary_full")
    assert check["figures"] == check["plotly_divs"] == 13 and check["blocked"] == [] and check["errors"] == [], check
    context = lab_browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    try:
        page = context.new_page()
        blocked = block_network(page)
        page.goto((site["out"] / "index.html").as_uri())
        page.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible")
        screenshot(page, "report_summary_first_screen")
        assert page.locator(".clipdg-banner").is_visible() and page.locator(".clipdg-findings").first.is_visible()
        with page.expect_download() as download:
            page.locator('a[href="metrics.csv.gz"]').first.click()
        import gzip
        lines = gzip.open(download.value.path(), "rt").read().splitlines()
        assert lines[0] == "run_dir,variant,split,metric,value" and len(lines) == 1 + 76 * 12
        box = page.locator(".clipdg-search input")
        box.fill("fraction=0.1 seed=1 fmow")
        hits = page.locator(".clipdg-search-results a")
        hits.first.wait_for(state="visible")
        assert hits.count() == 1 and "dataset=fmow, fraction=0.1, seed=1" in hits.first.inner_text()
        screenshot(page, "report_search")
        box.press("Enter")
        page.wait_for_url("**/demo/sweep/dataset-fmow_fraction-0.1_seed-1.html")
        assert "02 · Few-shot sweep" in page.title()
        page.locator(".clipdg-search input").fill("no-such-page-xyz")
        assert page.locator(".clipdg-search-results .clipdg-none").inner_text() == "no page matches"
        assert blocked == []
    finally:
        context.close()


# The window widths a reader brings: a phone, a laptop, a desktop
WIDTHS = (390, 1366, 1920)
_LAYOUT = """() => ({scroll: document.documentElement.scrollWidth, width: window.innerWidth,
    outside: [...document.querySelectorAll('.clipdg-figure')].flatMap(card => {
        const c = card.getBoundingClientRect();
        return [...card.querySelectorAll('.main-svg')].map(svg => svg.getBoundingClientRect())
            .filter(r => r.left < c.left - 1 || r.right > c.right + 1).map(r => [c.left, c.right, r.left, r.right]);
    }),
    figures: document.querySelectorAll('.clipdg-figure .main-svg').length})"""


@needs_browser
def test_summary_fits_every_width_sorts_filters_and_finds_calibration(site, lab_browser):  # noqa: F811
    """The summary at 390, 1366 and 1920 px: no horizontal scrolling, every figure inside its card, the
    weight-averaging and calibration findings shown; a header click sorts a table, its filter box
    narrows it, search finds 'calibration', and the page lists its sections."""
    from browser import block_network, screenshot

    for width in WIDTHS:
        context = lab_browser.new_context(viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            errors, blocked = [], block_network(page)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto((site["out"] / "index.html").as_uri())
            page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('.main-svg'))")
            page.wait_for_timeout(500)  # the resize after load
            layout = page.evaluate(_LAYOUT)
            screenshot(page, f"report_summary_{width}", full_page=True)
            assert layout["scroll"] <= layout["width"] and layout["outside"] == [], (width, layout)
            assert layout["figures"] >= 13 and errors == [] and blocked == [], (width, errors, blocked)
            for topic in ("weight averaging", "calibration"):
                section = page.locator(f"#demo-fmow-{topic.replace(' ', '-')}")
                assert section.inner_text() == f"fmow: {topic}"
                assert page.locator(".clipdg-findings", has_text="best single run").count() >= 2
            if width != 1366:
                continue
            table = page.locator("#demo-fmow-weight-averaging ~ .clipdg-scroll table").first
            measured = table.locator("tbody tr td:nth-child(2)")
            before = measured.all_inner_texts()
            table.locator("th", has_text="measured").click()
            after = [float(t.split()[0].rstrip(",")) for t in measured.all_inner_texts()]
            assert sorted(after) in (after, after[::-1]) and len(after) == len(before) and after != [
                float(t.split()[0].rstrip(",")) for t in before], (before, after)
            assert table.locator("th", has_text="measured").get_attribute("aria-sort") in ("ascending", "descending")
            page.locator("#demo-fmow-weight-averaging ~ .clipdg-filter").first.fill("soup")
            shown = table.locator("tbody tr:visible")
            assert shown.count() == 4 and all("soup" in t for t in shown.all_inner_texts())
            box = page.locator(".clipdg-search input")
            box.fill("calibration")
            hits = page.locator(".clipdg-search-results a")
            hits.first.wait_for(state="visible")
            assert "demo: summary" in hits.all_inner_texts()[0], hits.all_inner_texts()
            screenshot(page, "report_search_calibration")
            toc = page.locator(".clipdg-toc")
            assert toc.locator('a[href="#demo-fmow-calibration"]').count() == 1
        finally:
            context.close()
