"""One validated config dataclass per notebook family.

Each notebook's `parameters` cell mirrors the defaults of its dataclass (a test keeps them in
step); papermill injects overrides, and `from_params` turns the notebook's globals into a config,
rejecting unknown names and out-of-range values with a message that names the parameter.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .data import DATASETS, TEMPLATE_SETS, validate_seed
from .vocab import METHODS, PROBE_METHODS, SPLITS, VALIDATION_SPLITS  # noqa: F401 (re-exported)

FINETUNE_METHODS = ("finetune", "lp_ft", "vision_only")
EVAL_SPLITS = ("id_val", "id_test", "val", "test")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def _check_number(name: str, value, low=None, high=None, low_open=False, allow_none=False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name}={value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ValueError(f"{name}={value!r} must be <= {high}")


def _check_int(name: str, value, low=0) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


@dataclass
class RunConfig:
    """What every run shares: which data, which model, where results go."""
    experiment: str = "scratch"  # runs land in {output_dir}/{experiment}/{run_id}/
    dataset: str = "fmow"  # fmow | iwildcam
    root_dir: str = "outputs/data"  # folder holding fmow_v1.1/ or iwildcam_v2.0/
    download: bool = False  # True fetches the real dataset (54 GB FMoW, 12 GB iWildCam)
    model: str = "clipdg-tiny-vit"  # open_clip model name, e.g. ViT-B-32; or local-dir:/path
    pretrained: str | None = None  # open_clip tag ('openai'), a weights file, or None (random init)
    templates: str = "paper"  # paper (one prompt, as the study) | ensemble (CLIP's published set)
    seed: int = 0
    fraction: float = 1.0  # share of the WILDS train split, in (0, 1]
    stratify: bool = False  # keep every class in small subsets
    eval_splits: tuple = EVAL_SPLITS
    batch_size: int = 128
    eval_batch_size: int = 512
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = "outputs/runs"
    cache_dir: str = "outputs/cache"
    image_cache: bool = True  # decode each split once into a uint8 cache (False: PIL every epoch)
    num_workers: int = 0
    save_predictions: bool = True

    def validate(self) -> "RunConfig":
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("templates", self.templates, TEMPLATE_SETS)
        validate_seed(self.seed)
        _check_number("fraction", self.fraction, 0, 1, low_open=True)
        self.eval_splits = tuple(self.eval_splits)
        for split in self.eval_splits:
            _check_choice("eval_splits", split, SPLITS)
        for name in ("batch_size", "eval_batch_size"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("num_workers", self.num_workers)
        if not (self.device in ("auto", "cpu") or str(self.device).startswith("cuda")):
            raise ValueError(f"device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not str(self.experiment).replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"experiment={self.experiment!r} must be letters, digits, '-' or '_' (it names a folder)")
        return self

    def params(self) -> dict[str, Any]:
        """Every parameter as plain JSON-able values (for the run record)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class ZeroShotConfig(RunConfig):
    """01_zero_shot: CLIP with a prompt head, no training."""
    method: str = "zeroshot"

    def validate(self) -> "ZeroShotConfig":
        super().validate()
        _check_choice("method", self.method, ("zeroshot",))
        return self


@dataclass
class FinetuneConfig(RunConfig):
    """02_few_shot_sweep and 03_swa_ablation: one (fraction, seed, method, lr) training run."""
    method: str = "finetune"  # see METHODS
    lr: float = 1e-4
    epochs: int = 20
    optimizer: str = "adam"  # adam (the study: L2 weight decay) | adamw
    weight_decay: float = 1e-4
    scheduler: str = "step"  # step (StepLR, the study) | cosine (with warm-up)
    step_size: int = 15
    gamma: float = 0.1
    warmup_epochs: int = 0
    sampler: str = "group_uniform"  # group_uniform (the study) | shuffle
    augment: bool = False  # the study's flip / ColorJitter / rotation
    text_mode: str = "trainable"  # trainable (both towers, the study) | frozen (zero-shot head, WiSE-FT style)
    select_split: str = "id_val"  # checkpoint selection: id_val | val, never a test split
    select_metric: str | None = None  # None: the dataset's headline metric on select_split
    swa: bool = True
    swa_last_k: int = 10  # average the last K epochs (the study: last 10 of 20)
    swa_lr: float = 1e-4
    ema_decay: float | None = None  # e.g. 0.999 (per step); None disables EMA
    wise_alphas: tuple = ()  # WiSE-FT mixing weights evaluated, e.g. (0.25, 0.5, 0.75)
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    grad_clip: float | None = None
    probe_cs: tuple = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried by the linear probe (on select_split)
    vision_arch: str = "vit_b_32"  # vision-only baseline: vit_b_32 | tiny | clip-visual
    vision_weights: str | None = "imagenet"  # imagenet | a file | None (random)
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    compile: bool = False  # torch.compile the model for the training steps (first epoch pays the compile)

    def validate(self) -> "FinetuneConfig":
        super().validate()
        _check_choice("method", self.method, [m for m in METHODS if m != "zeroshot"])
        _check_number("lr", self.lr, 0, low_open=True)
        _check_int("epochs", self.epochs, low=1)
        _check_choice("optimizer", self.optimizer, ("adam", "adamw"))
        _check_number("weight_decay", self.weight_decay, 0)
        _check_choice("scheduler", self.scheduler, ("step", "cosine"))
        _check_int("step_size", self.step_size, low=1)
        _check_number("gamma", self.gamma, 0, 1, low_open=True)
        _check_int("warmup_epochs", self.warmup_epochs)
        _check_choice("sampler", self.sampler, ("group_uniform", "shuffle"))
        _check_choice("text_mode", self.text_mode, ("trainable", "frozen"))
        if self.select_split not in VALIDATION_SPLITS:
            raise ValueError(f"select_split={self.select_split!r}: choices are made on a validation split "
                             f"({list(VALIDATION_SPLITS)}), never on a test split")
        _check_int("swa_last_k", self.swa_last_k, low=1)
        if self.swa and self.swa_last_k > self.epochs:
            raise ValueError(f"swa_last_k={self.swa_last_k} exceeds epochs={self.epochs}")
        _check_number("swa_lr", self.swa_lr, 0, low_open=True)
        _check_number("ema_decay", self.ema_decay, 0, 1, low_open=True, allow_none=True)
        if self.ema_decay == 1:
            raise ValueError("ema_decay=1 never moves; use a value in (0, 1)")
        self.wise_alphas = tuple(float(a) for a in self.wise_alphas)
        for a in self.wise_alphas:
            _check_number("wise_alphas", a, 0, 1)
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_number("grad_clip", self.grad_clip, 0, low_open=True, allow_none=True)
        self.probe_cs = tuple(float(c) for c in self.probe_cs)
        for c in self.probe_cs:
            _check_number("probe_cs", c, 0, low_open=True)
        _check_choice("vision_arch", self.vision_arch, ("vit_b_32", "tiny", "clip-visual"))
        _check_int("checkpoint_every", self.checkpoint_every, low=1)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile={self.compile!r} must be True or False")
        return self


CONFIGS = {"zeroshot": ZeroShotConfig, "finetune": FinetuneConfig}


def from_params(cls, params: Mapping[str, Any]):
    """Build and validate a config from a mapping (e.g. a notebook's parameters), naming unknown keys."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    return cls(**dict(params)).validate()
