"""The method registry (`config.METHODS`): run identities of the existing methods never change, and
a malformed spec fails at import, naming the spec and the field."""
from __future__ import annotations

import itertools

import pytest

from clipdg_nb.config import NOT_IDENTITY, FinetuneConfig, ZeroShotConfig
from clipdg_nb.runs import run_id

EXISTING = ("linear_probe", "finetune", "flyp", "lp_ft", "vision_only", "vision_only_probe")
# The identity rules as they were written before the method registry (by method name), kept as the
# reference the registry must reproduce: a changed identity would orphan every finished run.
_TRAINING = ("lr", "epochs", "optimizer", "weight_decay", "scheduler", "step_size", "gamma", "warmup_epochs",
             "sampler", "augment", "text_mode", "select_metric", "swa", "swa_last_k", "swa_lr", "ema_decay",
             "wise_alphas", "precision", "grad_clip", "batch_size", "train_blocks")
_FIELDS_BEFORE = ("experiment", "dataset", "root_dir", "download", "model", "pretrained", "templates", "seed",
                  "eval_splits", "eval_batch_size", "device", "output_dir", "cache_dir", "image_cache", "num_workers",
                  "save_predictions", "method", "fraction", "stratify", "batch_size", "lr", "epochs", "optimizer",
                  "weight_decay", "scheduler", "step_size", "gamma", "warmup_epochs", "sampler", "augment",
                  "text_mode", "train_blocks", "select_split", "select_metric", "swa", "swa_last_k", "swa_lr",
                  "ema_decay", "wise_alphas", "precision", "grad_clip", "probe_cs", "vision_arch", "vision_weights",
                  "checkpoint_every", "compile")


def legacy_identity(cfg) -> dict:
    ident = {k: v for k, v in cfg.params().items() if k not in NOT_IDENTITY and k in _FIELDS_BEFORE}
    if cfg.method == "zeroshot":
        return ident
    if cfg.method in ("linear_probe", "vision_only_probe"):
        ident = {k: v for k, v in ident.items() if k not in _TRAINING}
    elif cfg.method != "lp_ft":
        del ident["probe_cs"]
    if cfg.method not in ("vision_only", "vision_only_probe"):
        del ident["vision_arch"], ident["vision_weights"]
    if ident.get("train_blocks", 0) is None:
        del ident["train_blocks"]
    if cfg.method == "flyp":
        ident.pop("text_mode", None)
    return ident


VARIATIONS = [{}, {"train_blocks": 2, "text_mode": "frozen", "ema_decay": 0.99, "wise_alphas": [0.5]},
              {"fraction": 0.25, "seed": 3, "probe_cs": [1.0], "lr": 1e-3, "swa": False, "stratify": True},
              {"vision_arch": "tiny", "vision_weights": None, "train_blocks": 0, "select_split": "val"}]


@pytest.mark.parametrize("method,variation", list(itertools.product(EXISTING, range(len(VARIATIONS)))))
def test_identity_of_existing_methods_is_unchanged(method, variation):
    cfg = FinetuneConfig(method=method, **VARIATIONS[variation]).validate()
    assert cfg.identity() == legacy_identity(cfg)


def test_zero_shot_identity_is_unchanged():
    for templates in ("paper", "ensemble"):
        cfg = ZeroShotConfig(templates=templates).validate()
        assert cfg.identity() == legacy_identity(cfg)


def test_run_ids_are_pinned():
    """Two run ids written down before the registry (absolute folders: the same on any machine)."""
    from clipdg_nb.config import PAPER_SIZES  # the defaults then (the demo's sizes are the defaults now)

    cfg = FinetuneConfig(method="lp_ft", root_dir="/data", output_dir="/out", cache_dir="/cache", **PAPER_SIZES).validate()
    probe = FinetuneConfig(method="vision_only_probe", root_dir="/data", output_dir="/out",
                           cache_dir="/cache", **PAPER_SIZES).validate()
    assert run_id(cfg.identity()) == PINNED["lp_ft"]
    assert run_id(probe.identity()) == PINNED["vision_only_probe"]


PINNED = {"lp_ft": "fmow-lp_ft-f1-lr0.0001-s0-39195a33", "vision_only_probe": "fmow-vision_only_probe-f1-s0-9233b9fc"}


def test_a_spec_missing_a_required_field_names_the_spec_and_the_field():
    from clipdg_nb.config import MethodSpec
    with pytest.raises(TypeError, match=r"MethodSpec 'mine': required field 'reads' is missing"):
        MethodSpec("mine", "my method", trains="end_to_end", init="zero_shot_head", encoder="clip",
                   variants=("best",), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"MethodSpec 'mine': field 'loss' is required"):
        MethodSpec("mine", "my method", trains="end_to_end", init="zero_shot_head", encoder="clip", reads=("lr",),
                   variants=("best",))
    with pytest.raises(ValueError, match=r"MethodSpec 'mine': init='probe'"):
        MethodSpec("mine", "my method", trains="probe", init="probe", encoder="clip", reads=(), variants=("best",))


def test_the_registry_is_checked_at_import(monkeypatch):
    """A misspelt field in `reads`, or a loss / hook not in losses.py, fails when the module loads."""
    import subprocess
    import sys
    import textwrap

    def import_with(patch: str) -> str:
        code = textwrap.dedent(f"""
            import dataclasses, sys
            import clipdg_nb.config as config
            {patch}
            """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0
        return proc.stderr.strip().splitlines()[-1]

    assert "MethodSpec 'finetune': field 'reads' names 'lrr'" in import_with(
        "config.METHODS['finetune'] = dataclasses.replace(config.METHODS['finetune'], reads=('lrr',)); "
        "config._check_reads()")
    assert "MethodSpec 'finetune': field 'loss' names 'ce'" in import_with(
        "config.METHODS['finetune'] = dataclasses.replace(config.METHODS['finetune'], loss='ce'); "
        "import clipdg_nb.methods")


def test_every_place_reads_the_spec_not_a_name():
    """No module of the package compares a method's name with a literal (the registry is the one place)."""
    import re
    from pathlib import Path

    import clipdg_nb
    root = Path(clipdg_nb.__file__).parent
    pattern = re.compile(r"method\w*[\"'\]]*\s*(==|!=|in|not in)\s*[(\[{]?\s*\"(zeroshot|linear_probe|finetune|flyp|lp_ft|"
                         r"vision_only|vision_only_probe|l2sp)\"")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    allowed = {"analysis/__init__.py"}  # the analysis filters the zero-shot reference rows of a results frame
    assert not [h for h in hits if h.split(":")[0] not in allowed], hits
