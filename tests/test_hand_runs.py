"""Hand runs, as a user makes them after `make demo`: papermill with the notebooks' own defaults, one
after the other in one checkout. 02 then 05 never read back each other's runs (05 needs kept
weights), and 04 names the experiment it analyses, or stops and lists them when several could be meant.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nbformat
import papermill
import pytest


pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def fresh_checkout(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, never outputs/), plus what
    `make demo` leaves for the notebooks, small: synthetic data and tiny CLIP weights (random: quick)."""
    from conftest import SMALL

    from clipdg_nb.config import TINY_CLIP_WEIGHTS, TINY_VISION_WEIGHTS
    from clipdg_nb.demo.synthetic import write_synthetic
    from clipdg_nb.models import load_clip, save_weights

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    write_synthetic(dest / "outputs" / "data", cfg=SMALL)
    model = load_clip("clipdg-tiny-vit").model
    for weights in (TINY_CLIP_WEIGHTS, TINY_VISION_WEIGHTS):
        save_weights(model, dest / weights)
    return dest


def execute(root: Path, notebook: str, **parameters) -> nbformat.NotebookNode:
    return papermill.execute_notebook(str(root / "notebooks" / notebook), str(root / "outputs" / f"hand-{notebook}"),
                                      parameters=parameters, cwd=str(root / "notebooks"), kernel_name="python3",
                                      progress_bar=False)  # as a person runs papermill by hand


def texts(nb) -> list[str]:
    return [o.get("text") or "".join(o.get("data", {}).get("text/plain", "")) for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if o.output_type in ("stream", "execute_result", "error") or "text/plain" in o.get("data", {})]


def figure_titles(nb) -> list[str]:
    return [o["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"] for c in nb.cells
            if c.cell_type == "code" for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]


@pytest.fixture(scope="module")
def hand_runs(tmp_path_factory):
    """02, then 05, each with its defaults (papermill passes no parameter), in one fresh checkout."""
    root = fresh_checkout(tmp_path_factory.mktemp("checkout"))
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPDG_ROOT", str(root))  # as `cd checkout && papermill ...`: the kernel finds its project there
    try:
        sweep = execute(root, "02_few_shot_sweep.ipynb")
        try:
            soups = execute(root, "05_model_soups.ipynb")
        except papermill.PapermillExecutionError as err:  # said by the test below; 04's tests go on
            soups = err
        yield root, sweep, soups
    finally:
        mp.undo()


def test_02_then_05_with_their_defaults_in_one_checkout(hand_runs):
    root, sweep, soups = hand_runs
    assert not isinstance(soups, Exception), f"05 failed after 02: {str(soups)[-1500:]}"
    for nb in (sweep, soups):
        first = texts(nb)[0]  # the first output says the sizes in effect and how to get the paper's
        assert first.startswith("profile: the demo's sizes (epochs 4, batch_size 64, step_size 3, swa_last_k 2)")
        assert "the paper's: papermill -p epochs 20 -p batch_size 128" in first
        assert not any("REUSED" in t for t in texts(nb))  # neither read back the other's run
    sweep_runs = sorted(p.parent for p in (root / "outputs/runs/scratch").glob("*/result.json"))
    soup_runs = sorted(p.parent for p in (root / "outputs/runs/soups/scratch").glob("*/result.json"))
    assert len(sweep_runs) == 1 and len(soup_runs) == 3
    assert {p.name for p in sweep_runs} < {p.name for p in soup_runs}  # the same run (id) in each folder
    assert all((p / "weights/last.safetensors").is_file() for p in soup_runs)
    assert next((root / "outputs/runs/soups/scratch/soups").glob("*/result.json")).is_file()


def test_04_after_a_hand_run_stops_listing_the_experiments(hand_runs, tmp_path):
    root = hand_runs[0]
    shutil.copytree(root / "outputs/runs/scratch", root / "outputs/runs/demo")  # as `make demo` leaves beside it
    try:
        with pytest.raises(papermill.PapermillExecutionError) as err:
            execute(root, "04_analysis.ipynb")
        said = str(err.value)
        assert "2 experiments under" in said and "which one?" in said and "scratch (1 runs" in said
        assert "demo (1 runs" in said and "papermill -p experiment " in said
    finally:
        shutil.rmtree(root / "outputs/runs/demo")


def test_04_names_its_experiment_first_and_in_every_figure(hand_runs):
    nb = execute(hand_runs[0], "04_analysis.ipynb")  # the one experiment there: 02's, with 05's soups
    assert texts(nb)[0].startswith("analysing experiment 'scratch' under ")
    titles = figure_titles(nb)
    assert len(titles) >= 3 and all(t.startswith("scratch: ") for t in titles), titles
