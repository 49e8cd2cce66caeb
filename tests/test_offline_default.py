"""With no parameters a run uses the offline default (demo data, tiny pretrained weights) or stops
saying what to run; a random-init CLIP only when asked (pretrained=None), and then it says so.
Training progress: a line per epoch under papermill, bars elsewhere, nothing when asked."""
from __future__ import annotations

import pytest

from clipdg_nb import methods
from clipdg_nb.config import TINY_CLIP_WEIGHTS, FinetuneConfig, ZeroShotConfig
from clipdg_nb.inputs import (MissingInputsError, check_inputs, is_random, title_suffix, weights_note,
                              weights_of)
from clipdg_nb.notebook_kernel import ENV_VAR, progress_mode
from clipdg_nb.paths import MANIFEST_ENV


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project root: relative parameters resolve from it."""
    monkeypatch.setenv("CLIPDG_ROOT", str(tmp_path))
    return tmp_path


def test_missing_default_inputs_name_the_command(project):
    cfg = ZeroShotConfig().validate()
    assert cfg.root_dir == str(project / "outputs" / "data")
    with pytest.raises(MissingInputsError) as err:
        check_inputs(cfg)
    text = str(err.value)
    assert "make demo" in text and "clipdg synth && clipdg pretrain-tiny" in text
    assert "root_dir=" in text and "pretrained='outputs/cache/pretrain/tiny-clip.safetensors'" in text
    vision = FinetuneConfig(method="vision_only").validate()
    with pytest.raises(MissingInputsError, match="vision_weights='outputs/cache/pretrain/tiny-vision.safetensors'"):
        check_inputs(vision)


def test_default_weights_with_another_model_are_refused():
    with pytest.raises(ValueError, match="pretrained='openai'"):
        ZeroShotConfig(model="ViT-B-32").validate()
    with pytest.raises(ValueError, match="vision_arch='vit_b_32', vision_weights='imagenet'"):
        FinetuneConfig(method="vision_only", model="ViT-B-32", pretrained="openai").validate()
    # a CLIP method never reads the vision-only settings
    FinetuneConfig(method="finetune", model="ViT-B-32", pretrained="openai").validate()


def test_weights_are_named_and_random_init_is_said():
    assert weights_of(ZeroShotConfig()) == TINY_CLIP_WEIGHTS and not is_random(ZeroShotConfig())
    random = ZeroShotConfig(pretrained=None)
    assert weights_of(random) == "random init" and is_random(random)
    note = weights_note(random)
    assert note.startswith("WARNING") and "RANDOMLY INITIALISED" in note and "pretrained=None" in note
    assert title_suffix(random) == " (RANDOM-INIT weights)" and title_suffix(ZeroShotConfig()) == ""
    assert weights_of(ZeroShotConfig(model="local-dir:/w", pretrained=None)) == "local-dir:/w"
    assert weights_of(FinetuneConfig(method="vision_only", vision_weights=None)) == f"clip-visual: {TINY_CLIP_WEIGHTS}"
    assert weights_of(FinetuneConfig(method="vision_only", vision_arch="tiny", vision_weights=None)) == "tiny: random init"
    assert weights_of(FinetuneConfig(method="vision_only", vision_arch="vit_b_32", vision_weights="imagenet")) \
        == "vit_b_32: imagenet"
    both = [FinetuneConfig(method="finetune", pretrained=None), FinetuneConfig(method="vision_only")]
    lines = weights_note(both).splitlines()
    assert len(lines) == 2 and lines[0].startswith("WARNING") and lines[1].startswith("weights: vision_only")


def test_runs_record_their_weights(synth_root, project, run_kwargs):
    from clipdg_nb.models import load_clip, save_weights

    kwargs = {k: v for k, v in run_kwargs.items() if k in ("output_dir", "cache_dir", "eval_batch_size")}
    random = methods.run(ZeroShotConfig(root_dir=str(synth_root), pretrained=None, eval_splits=["test"], **kwargs))
    assert random["weights"] == "random init"
    save_weights(load_clip("clipdg-tiny-vit").model, project / TINY_CLIP_WEIGHTS)  # the default, relative to the root
    default = methods.run(ZeroShotConfig(root_dir=str(synth_root), eval_splits=["test"], **kwargs))
    assert default["weights"] == TINY_CLIP_WEIGHTS and default["params"]["pretrained"] == TINY_CLIP_WEIGHTS


def test_progress_mode(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    assert progress_mode(False) == "off" and progress_mode("text") == "text"
    assert progress_mode(True) == "bars"  # no papermill here: tqdm.auto decides (text bars in a terminal)
    monkeypatch.setenv(MANIFEST_ENV, "/tmp/manifest")  # `clipdg run` executes the notebook
    assert progress_mode(True) == "text"
    monkeypatch.setenv(ENV_VAR, "off")
    assert progress_mode(True) == "off"
    with pytest.raises(ValueError, match="progress"):
        progress_mode("loud")


def test_text_progress_is_one_line_per_epoch(synth_root, run_kwargs, capsys):
    cfg = FinetuneConfig(root_dir=str(synth_root), method="vision_only", lr=1e-3, epochs=2, swa=False, fraction=0.25,
                         eval_splits=["id_val"], **run_kwargs)
    methods.run(cfg, progress="text")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "vision_only lr=0.001: 2 epochs"
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1/2", "epoch 2/2"]
    assert "train loss" in lines[1] and "id_val/acc_avg" in lines[1]
