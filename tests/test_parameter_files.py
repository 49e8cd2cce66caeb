"""Every shipped experiment file loads, names only parameters its notebooks declare, and the paper
files hold the reference protocol of DESIGN.md exactly."""
from __future__ import annotations

from pathlib import Path

import pytest

from clipdg_nb.pipeline.experiment import load_experiment
from clipdg_nb.pipeline.validate import experiment_problems

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "parameters").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_experiment_file_loads(path):
    experiment = load_experiment(path, root=ROOT)
    assert experiment.stages and all(stage.points for stage in experiment.stages)
    # every point's values make a valid config (files and folders are checked when it runs)
    assert experiment_problems(experiment, paths=False) == []


@pytest.mark.parametrize("name", ["paper_fmow", "paper_iwildcam"])
def test_paper_protocol(name):
    experiment = load_experiment(ROOT / "parameters" / f"{name}.yaml", root=ROOT)
    sweep = [p.parameters for s in experiment.stages for p in s.points if "methods" in p.parameters]
    assert sweep, "no training stage"
    fractions = sorted({p["fraction"] for p in sweep})
    assert fractions == [0.03, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    assert sorted({p["seed"] for p in sweep}) == [0, 1, 2]
    for p in sweep:
        assert sorted(p["lrs"]) == [1e-5, 1e-4, 1e-3, 1e-2]
        assert (p["model"], p["pretrained"], p["templates"]) == ("ViT-B-32", "openai", "paper")
        assert (p["optimizer"], p["weight_decay"], p["batch_size"], p["epochs"]) == ("adam", 1e-4, 128, 20)
        assert (p["scheduler"], p["step_size"], p["gamma"]) == ("step", 15, 0.1)
        assert (p["swa"], p["swa_last_k"], p["swa_lr"], p["sampler"]) == (True, 10, 1e-4, "group_uniform")
    zero_shot = [p for s in experiment.stages for p in s.points if "01_zero_shot" in str(s.notebook)]
    assert zero_shot, "the 0 % point (zero-shot) is part of the protocol"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_point_builds_valid_configs_with_weights_for_its_model(path):
    """Each point's configs (its parameters over the notebook defaults) validate, and a file that
    names a real model never falls back on the offline demo's tiny weights (the notebooks' default)."""
    from clipdg_nb.config import METHODS, TINY_CLIP_WEIGHTS, TINY_MODEL, TINY_VISION_WEIGHTS
    from clipdg_nb.pipeline.validate import point_configs

    experiment = load_experiment(path, root=ROOT)
    configs = [c for stage in experiment.stages for point in stage.points for c in point_configs(point) or []]
    assert configs or experiment.name == "never"
    for cfg in configs:
        if cfg.model != TINY_MODEL:
            assert cfg.pretrained not in (None, TINY_CLIP_WEIGHTS), (path.name, cfg.method, cfg.pretrained)
            if METHODS[cfg.method].encoder == "vision":
                assert cfg.vision_weights != TINY_VISION_WEIGHTS and cfg.vision_arch == "vit_b_32", (
                    path.name, cfg.method, cfg.vision_arch, cfg.vision_weights)
        else:  # the offline files: pretrained tiny weights (any caption coverage), never a random CLIP by accident
            assert cfg.pretrained in (TINY_CLIP_WEIGHTS, *COVERAGE_WEIGHTS), (path.name, cfg.method)


COVERAGE_WEIGHTS = ("outputs/cache/pretrain/coverage-0.5/tiny-clip.safetensors",
                    "outputs/cache/pretrain/coverage-0/tiny-clip.safetensors")


def test_coverage_demo_pairs_each_clip_with_the_twin_of_its_pretraining():
    from clipdg_nb.demo.pretrain import PretrainConfig

    experiment = load_experiment(ROOT / "parameters" / "coverage_demo.yaml", root=ROOT)
    sweep = [p.parameters for s in experiment.stages for p in s.points if "methods" in p.parameters]
    folders = {str(PretrainConfig(coverage=c).folder("outputs/cache")) for c in (1.0, 0.5, 0.0)}
    assert {str(Path(p["pretrained"]).parent) for p in sweep} == folders
    for p in sweep:
        assert Path(p["pretrained"]).parent == Path(p["vision_weights"]).parent, p
        assert sorted(p["methods"]) == ["finetune", "vision_only"]
    assert len(sweep) == 3 * 2 * 3  # coverages x fractions x seeds
    zero_shot = {p.parameters["pretrained"] for s in experiment.stages for p in s.points if "01_zero_shot" in str(s.notebook)}
    assert {str(Path(z).parent) for z in zero_shot} == folders
