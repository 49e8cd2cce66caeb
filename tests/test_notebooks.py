"""The five notebooks, executed by the sweep runner through papermill on tiny synthetic data.

One small experiment (one point per stage) runs once per session: zero-shot, a sweep point
(linear probe, fine-tune, tiny vision-only; one epoch), the ablation (which reuses the sweep's
fine-tune run: same parameters, so the api reads its record back), the soups (two lrs, in their own
output_dir) and the analysis.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from clipdg_nb.pipeline.runner import run_experiment
from clipdg_nb.runs import Run

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TRAIN = {"epochs": 1, "swa_last_k": 1, "fraction": 0.25, "batch_size": 64, "eval_batch_size": 256,
         "vision_arch": "tiny", "vision_weights": None}


@pytest.fixture(scope="module")
def executed(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    doc = {
        "experiment": "nbtest",
        "defaults": {"dataset": "fmow", "root_dir": str(synth_root), "model": "clipdg-tiny-vit", "pretrained": None,
                     "output_dir": "outputs/runs", "cache_dir": "outputs/cache",
                     "eval_splits": ["id_val", "id_test", "test"]},  # all that 04 reads; OOD val skipped for time
        "stages": [
            {"name": "zero_shot", "notebook": str(NOTEBOOKS / "01_zero_shot.ipynb"), "params": {"gallery_size": 4}},
            {"name": "sweep", "notebook": str(NOTEBOOKS / "02_few_shot_sweep.ipynb"),
             "params": {**TRAIN, "methods": ["linear_probe", "finetune", "vision_only"], "lrs": [1.0e-3]}},
            {"name": "ablation", "notebook": str(NOTEBOOKS / "03_swa_ablation.ipynb"),
             "params": {**TRAIN, "lr": 1.0e-3, "gallery_size": 2}},
            {"name": "soups", "notebook": str(NOTEBOOKS / "05_model_soups.ipynb"),
             "params": {**TRAIN, "lrs": [1.0e-3, 3.0e-4], "output_dir": "outputs/runs/soups"}},
            {"name": "analysis", "notebook": str(NOTEBOOKS / "04_analysis.ipynb")},
        ],
    }
    path = root / "nbtest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    summary = run_experiment(path, root=root, progress=False)
    return root, summary


def _outputs(nb_path: Path):
    nb = nbformat.read(str(nb_path), as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_every_notebook_runs_without_error(executed):
    root, summary = executed
    failed = {r.name: r.error for r in summary.failed}
    assert not failed and len(summary.done) == 5, failed
    for stage in ("zero_shot", "sweep", "ablation", "soups", "analysis"):
        outs = _outputs(root / f"outputs/notebooks/nbtest/{stage}/default.ipynb")
        assert not [o for o in outs if o.output_type == "error"]


def test_a_second_run_skips_every_point_by_the_runs_each_notebook_made(executed):
    """`is_done` computes each point's runs from the parameters (validate's configs, by content): they
    must be the runs the notebooks made and noted, or every sweep would run every point again."""
    root, _ = executed
    summary = run_experiment(root / "nbtest.yaml", root=root, progress=False)
    assert len(summary.skipped) == 5 and not summary.done, summary.format()


def test_run_records_and_predictions_written(executed):
    root, _ = executed
    runs = root / "outputs/runs/nbtest"
    ids = sorted(p.parent.name for p in runs.glob("*/result.json"))
    readable = [i.rsplit("-", 1)[0] for i in ids]  # ids end in a short hash of the rest of the identity
    assert readable == ["fmow-finetune-f0.25-lr0.001-s0", "fmow-linear_probe-f0.25-s0",
                        "fmow-vision_only-f0.25-lr0.001-s0", "fmow-zeroshot-paper-s0"]
    ft = Run(runs / ids[0])
    assert {"best", "last", "swa"} <= set(ft.record()["variants"]) and ft.record()["history"]
    assert len(ft.predictions("test", variant="swa")) > 0
    # the sweep's done markers list the runs each notebook reported
    marker = json.loads((root / "outputs/notebooks/nbtest/sweep/default.done.json").read_text())
    assert sorted(Path(d).name for d in marker["run_dirs"]) == ids[:3]
    # the ablation's run has the sweep's identity, so it is the same run, reused
    ablation = json.loads((root / "outputs/notebooks/nbtest/ablation/default.done.json").read_text())
    assert [Path(d).name for d in ablation["run_dirs"]] == [ids[0]]


def test_the_soup_stage_through_its_notebook(executed):
    """05 trained two runs that kept their weights, in its own folder, and wrote the soups: every soup
    variant's numbers are WILDS's own eval on its saved predictions; 04 compared and calibrated them."""
    from clipdg_nb import soups
    from clipdg_nb.data import load_dataset
    from clipdg_nb.evaluate import wilds_metrics

    root, _ = executed
    [soup] = soups.load_soups(root / "outputs/runs/soups", "nbtest")
    ingredients = sorted(soup["soups"]["uniform_soup"]["ingredients"])
    assert [i.rsplit("-", 1)[0] for i in ingredients] == ["fmow-finetune-f0.25-lr0.0003-s0", "fmow-finetune-f0.25-lr0.001-s0"]
    assert all((root / "outputs/runs/soups/nbtest" / i / "weights/last.safetensors").is_file() for i in ingredients)
    assert not list((root / "outputs/runs/nbtest").glob("*/weights"))  # the sweep's runs keep none
    marker = json.loads((root / "outputs/notebooks/nbtest/soups/default.done.json").read_text())
    assert sorted(Path(d).name for d in marker["run_dirs"]) == sorted([*ingredients, soup["run_id"]])
    folder = Run(root / "outputs/runs/soups/nbtest/soups" / soup["run_id"])
    dataset = load_dataset("fmow", soup["root_dir"])  # the session's synthetic folder (an absolute path)
    for variant in ("greedy_soup", "uniform_soup"):
        for split in ("id_val", "id_test", "test"):
            preds = folder.predictions(split, variant=None if variant == "greedy_soup" else variant)
            assert soup["variants"][variant][split] == pytest.approx(wilds_metrics(dataset, preds["idx"], preds["y_pred"]))
    text = _text(root / "outputs/notebooks/nbtest/soups/default.ipynb")
    assert "greedy soup of" in text
    analysis = _text(root / "outputs/notebooks/nbtest/analysis/default.ipynb")
    assert "not in the soup stage's runs, so not compared here: ema, wise_ft" in analysis  # the stage set neither
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in
                   _outputs(root / "outputs/notebooks/nbtest/analysis/default.ipynb"))
    assert "greedy_soup" in html and "ece_ts" in html  # the comparison and calibration tables


def test_a_reused_run_is_said_on_screen(executed):
    """03 reads back 02's identical fine-tune run and trains nothing: it says which run and how to force."""
    root, _ = executed
    text = _text(root / "outputs/notebooks/nbtest/ablation/default.ipynb")
    ft = next(root.glob("outputs/runs/nbtest/fmow-finetune-*/result.json")).parent
    assert f"REUSED: {ft.name} finished earlier (" in text and f"read back from {ft}." in text
    assert "force=True in the parameters (papermill -p force True; clipdg run --force)" in text
    assert "epoch 1/1" not in text  # and indeed nothing was trained
    assert "REUSED" not in _text(root / "outputs/notebooks/nbtest/sweep/default.ipynb")  # trained there


def _papermill(notebook, out, cwd, *args, timeout=600):
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / notebook), str(out), "--cwd", str(cwd),
           "--no-progress-bar", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, CLIPDG_ROOT=str(cwd)))


def test_analysis_defaults_to_the_most_recent_experiment_and_explains_empty_sections(executed, tmp_path):
    """Plain papermill, no experiment given: 04 finds nbtest (the experiment with runs), and asked about
    a method that was never run, its sections say what is missing and which notebook makes it."""
    root, _ = executed
    out = tmp_path / "analysis.ipynb"
    proc = _papermill("04_analysis.ipynb", out, root, "-p", "clip_method", "flyp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = _text(out)
    assert "analysing experiment 'nbtest' under" in text and "(experiment=None: the only one with fmow runs there)" in text
    assert "nothing to compare: 'nbtest' has no flyp and vision_only runs at the same fraction and seed" in text
    assert "02_few_shot_sweep with methods [flyp, vision_only] makes them" in text
    assert "no flyp runs with SWA weights in 'nbtest'" in text
    assert "no trend line, so no effective robustness" in text  # one vision_only point: no line


def test_a_mistyped_papermill_parameter_stops_the_notebook(tmp_path):
    out = tmp_path / "typo.ipynb"
    proc = _papermill("01_zero_shot.ipynb", out, tmp_path, "-p", "datset", "iwildcam", timeout=300)
    assert proc.returncode != 0 and "UnknownParameterError" in proc.stderr
    assert "unknown parameter 'datset' (did you mean 'dataset'?)" in proc.stderr
    nb = nbformat.read(str(out), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "injected-parameters" in code[1].metadata.tags  # papermill's cell, then the first cell: it stops there
    assert [o.output_type for o in code[2].outputs if o.output_type == "error"] == ["error"]
    assert all(c.execution_count is None for c in code[3:])  # nothing after it ran


def _text(nb_path: Path) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb_path) if o.output_type == "stream")


def test_random_init_is_said_and_progress_is_plain_lines(executed):
    """The experiment asks for pretrained=None: the notebooks warn and the records say so. Training
    under papermill prints one line per epoch, no widget bars."""
    root, _ = executed
    zero_shot = _text(root / "outputs/notebooks/nbtest/zero_shot/default.ipynb")
    assert "WARNING: zeroshot (clipdg-tiny-vit) starts from RANDOMLY INITIALISED weights" in zero_shot
    records = [json.loads(p.read_text()) for p in (root / "outputs/runs/nbtest").glob("*/result.json")]
    assert {r["method"]: r["weights"] for r in records} == {
        "zeroshot": "random init", "linear_probe": "random init", "finetune": "random init",
        "vision_only": "tiny: random init"}
    sweep = root / "outputs/notebooks/nbtest/sweep/default.ipynb"
    text = _text(sweep)
    assert "finetune lr=0.001: 1 epochs" in text and text.count("epoch 1/1: train loss") == 2  # finetune, vision_only
    assert not [o for o in _outputs(sweep) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "widgets" not in nbformat.read(str(sweep), as_version=4).metadata


def test_figures_and_gallery_survive_as_html(executed):
    root, _ = executed
    html = ["".join(o.get("data", {}).get("text/html", "")) for o in
            _outputs(root / "outputs/notebooks/nbtest/zero_shot/default.ipynb")]
    # executed by the runner: plotly.js left out (the report loads it once; JupyterLab draws plotly's
    # own mimetype); a plain papermill / nbconvert run keeps it inline once (tests/test_report.py)
    assert sum("plotly.js v" in h for h in html) == 0
    assert any("Plotly.newPlot" in h for h in html)
    assert any("data:image/png;base64," in h and "clipdg-gallery" in h for h in html)
    analysis = ["".join(o.get("data", {}).get("text/html", "")) for o in
                _outputs(root / "outputs/notebooks/nbtest/analysis/default.ipynb")]
    assert sum("Plotly.newPlot" in h for h in analysis) >= 4  # curves, CLIP vs vision, SWA, ID-OOD, groups


def test_plain_papermill_cli_with_only_fraction_and_seed(synth_root, tmp_path):
    """`papermill notebooks/02_few_shot_sweep.ipynb out.ipynb -p fraction 0.1 -p seed 1` works from the
    notebook's own defaults: the offline default's tiny weights, or an error saying how to make them
    (here the data location is given and only the cheap probe is trained)."""
    from clipdg_nb.config import TINY_CLIP_WEIGHTS
    from clipdg_nb.models import load_clip, save_weights

    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "02_few_shot_sweep.ipynb"), str(tmp_path / "out.ipynb"),
           "-p", "fraction", "0.1", "-p", "seed", "1", "-p", "root_dir", str(synth_root),
           "-y", "methods: [linear_probe]", "--cwd", str(tmp_path), "--no-progress-bar"]
    # relative paths in parameters mean "from the project root", here the test's folder
    env = dict(os.environ, CLIPDG_ROOT=str(tmp_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "MissingInputsError" in proc.stderr
    assert "make demo" in proc.stderr and "clipdg synth && clipdg pretrain-tiny" in proc.stderr
    save_weights(load_clip("clipdg-tiny-vit").model, tmp_path / TINY_CLIP_WEIGHTS)  # stands in for pretrain-tiny
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = tmp_path.glob("outputs/runs/scratch/fmow-linear_probe-f0.1-s1-*/result.json")
    assert json.loads(result.read_text())["weights"] == TINY_CLIP_WEIGHTS
    assert "weights: linear_probe (clipdg-tiny-vit) starts from outputs/cache/pretrain/tiny-clip.safetensors" in \
        _text(tmp_path / "out.ipynb")
