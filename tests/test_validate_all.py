"""Validation reports everything at once: every structural problem of an experiment file, the
files a point names even when its values fail, and each weights file's readability and
architecture, checked once, before any kernel starts."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipdg_nb.pipeline.experiment import ExperimentError, load_experiment
from clipdg_nb.pipeline.validate import experiment_problems

REPO = Path(__file__).resolve().parents[1]
SWEEP = str(REPO / "notebooks/02_few_shot_sweep.ipynb")
ZERO_SHOT = str(REPO / "notebooks/01_zero_shot.ipynb")


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_every_structural_problem_of_a_file_is_reported_at_once(tmp_path):
    doc = {"experiment": "bad name", "colour": "red",
           "defaults": {"lr": "1e-3"},
           "stages": [{"name": "a", "notebook": SWEEP, "grid": {"fraction": 0.1}, "extra": 1},
                      {"name": "b", "notebook": "missing.ipynb"},
                      {"name": "c", "notebook": ZERO_SHOT, "params": {"no_such_param": 1}}]}
    with pytest.raises(ExperimentError) as info:
        load_experiment(write(tmp_path, doc), root=tmp_path)
    text = str(info.value)
    for part in ("colour: unknown key", "experiment: must be a name", "defaults.lr: '1e-3' is text",
                 "stages[0].extra: unknown stage key", "stages[0] (a).grid.fraction: must be a non-empty list",
                 "stages[1] (b).notebook: missing.ipynb does not exist",
                 "stages[2] (c).params.no_such_param: ", "7 problems in"):
        assert part in text, f"{part!r} not in:\n{text}"


def test_a_missing_weights_file_is_reported_when_other_values_fail_too(tmp_path):
    doc = {"experiment": "e", "defaults": {"root_dir": "nowhere", "pretrained": None},
           "stages": [{"name": "s", "notebook": SWEEP,
                       "params": {"methods": ["vision_only"], "vision_arch": "tinyy", "epochs": 1,
                                  "vision_weights": "weights/missing.safetensors"}}]}
    problems = "\n".join(experiment_problems(load_experiment(write(tmp_path, doc), root=tmp_path)))
    assert "swa_last_k=2 exceeds epochs=1" in problems  # the user set epochs; swa_last_k is the default
    assert "vision_arch='tinyy' is not valid" in problems
    assert "vision_weights='weights/missing.safetensors': no such file" in problems


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Readable tiny CLIP weights of two architectures, tiny vision-only weights and a junk file."""
    import torch

    from clipdg_nb.models import load_clip, vision_only
    from clipdg_nb.models.weights import save_weights

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_weights(load_clip("clipdg-tiny-vit").model, folder / "tiny-clip.safetensors")
    save_weights(load_clip("clipdg-tiny-vit-64").model, folder / "tiny-clip-64.safetensors")
    save_weights(vision_only(62, arch="tiny", image_size=32), folder / "tiny-vision.safetensors")
    (folder / "junk.safetensors").write_bytes(b"not weights at all" * 10)
    return folder


def test_weights_are_read_once_up_front_readable_and_of_the_architecture_asked(tmp_path, weights, monkeypatch):
    from clipdg_nb import inputs

    opened = []
    real = inputs.weight_shapes
    monkeypatch.setattr(inputs, "weight_shapes", lambda path, what="weights file": opened.append(path)
                        or real(path, what))
    (tmp_path / "data").mkdir()
    doc = {"experiment": "e", "defaults": {"root_dir": "data", "download": False, "model": "clipdg-tiny-vit"},
           "stages": [
               {"name": "wrong", "notebook": SWEEP, "grid": {"fraction": [0.1, 0.5], "seed": [0, 1]},
                "params": {"methods": ["finetune", "vision_only"], "pretrained": str(weights / "tiny-clip-64.safetensors"),
                           "vision_arch": "tiny", "vision_weights": str(weights / "junk.safetensors")}},
               {"name": "right", "notebook": SWEEP, "grid": {"fraction": [0.1, 0.5]},
                "params": {"methods": ["linear_probe", "vision_only"], "pretrained": str(weights / "tiny-clip.safetensors"),
                           "vision_arch": "tiny", "vision_weights": str(weights / "tiny-vision.safetensors")}},
               {"name": "vision_as_clip", "notebook": ZERO_SHOT,
                "params": {"pretrained": str(weights / "tiny-vision.safetensors")}}]}
    problems = experiment_problems(load_experiment(write(tmp_path, doc), root=tmp_path))
    text = "\n".join(problems)
    wrong_arch = [p for p in problems if "tiny-clip-64.safetensors" in p]
    assert len(wrong_arch) == 1 and "does not fit model_name='clipdg-tiny-vit'" in wrong_arch[0], text
    assert "stage wrong" in wrong_arch[0] and "(and 3 more point(s))" in wrong_arch[0], wrong_arch
    junk = [p for p in problems if "junk.safetensors" in p]
    assert len(junk) == 1 and "is not a readable weights file" in junk[0], text
    assert [p for p in problems if "tiny-vision.safetensors" in p and "stage vision_as_clip" in p
            and "does not fit model_name='clipdg-tiny-vit'" in p], text
    assert "stage right" not in text  # the right weights are not flagged
    assert "tiny-clip.safetensors'" not in text
    # each distinct (file, architecture) opened once, not once per point (there are 7 points)
    assert sorted(Path(p).name for p in opened) == sorted(
        ["tiny-clip-64.safetensors", "junk.safetensors", "tiny-clip.safetensors", "tiny-vision.safetensors",
         "tiny-vision.safetensors"]), opened
