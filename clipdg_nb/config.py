"""One dataclass per notebook family, with its choices, validated once at the boundary.

Each notebook's `parameters` cell shows the fields of its dataclass that its users change, typed
(a test keeps the two in step); papermill injects overrides and `from_namespace` turns the
notebook's globals into a validated config. Inside the package, values are trusted.
`identity()` is what changes a run's numbers: it names the run folder and decides whether a
finished run can be reused; where files live or how big an evaluation batch is never enters it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .data import DATASETS, EVAL_SPLITS, SPLITS, TEMPLATE_SETS, VALIDATION_SPLITS, dataset_splits
from .paths import resolve

# The offline default (`make demo`, or `clipdg synth && clipdg pretrain-tiny`): synthetic data and a
# tiny CLIP pretrained on a synthetic caption corpus, plus its supervised image tower as the
# vision-only baseline. Relative paths resolve from the repository root. `pretrained=None` (given
# explicitly) is a randomly initialised CLIP, and every output of such a run says so.
DEMO_DATA = "outputs/data"
TINY_CLIP_WEIGHTS = "outputs/cache/pretrain/tiny-clip.safetensors"
TINY_VISION_WEIGHTS = "outputs/cache/pretrain/tiny-vision.safetensors"
TINY_MODEL = "clipdg-tiny-vit"  # the model those weights belong to

METHODS = ("zeroshot", "linear_probe", "finetune", "flyp", "lp_ft", "vision_only", "vision_only_probe")
TRAINED_METHODS = METHODS[1:]
PROBE_METHODS = ("linear_probe", "vision_only_probe")  # no learning rate: their L2 strength is chosen on val
VISION_METHODS = ("vision_only", "vision_only_probe")
LOCATIONS = ("root_dir", "output_dir", "cache_dir")  # folders; relative ones resolve from the repository root
# Where files live and how work is batched or placed: never part of a run's identity.
NOT_IDENTITY = ("experiment", "root_dir", "download", "output_dir", "cache_dir", "eval_batch_size", "device",
                "image_cache", "num_workers", "save_predictions", "checkpoint_every", "compile", "keep_weights")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def _number(name: str, value, low=None, high=None, low_open=False, allow_none=False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name}={value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ValueError(f"{name}={value!r} must be <= {high}")


def _integer(name: str, value, low=0) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def _text(name: str, value, allow_none=False) -> None:
    if not (isinstance(value, str) and value) and not (value is None and allow_none):
        raise ValueError(f"{name}={value!r} must be a non-empty string" + (" or None" if allow_none else ""))


@dataclass
class RunConfig:
    """What every run shares: which data, which model, where results go."""
    experiment: str = "scratch"  # runs land in {output_dir}/{experiment}/{run_id}/
    dataset: str = "fmow"  # fmow | iwildcam | camelyon17 (clipdg_nb.data.DATASETS)
    root_dir: str = DEMO_DATA  # folder holding the dataset's WILDS folder, e.g. fmow_v1.1/ (default: `clipdg synth`)
    download: bool = False  # True fetches the real dataset (54 GB FMoW, 12 GB iWildCam)
    model: str = TINY_MODEL  # open_clip model name, e.g. ViT-B-32; or local-dir:/path
    pretrained: str | None = TINY_CLIP_WEIGHTS  # open_clip tag ('openai'), a weights file, or None: random init
    templates: str = "paper"  # paper (one prompt, as the study) | ensemble (CLIP's published set)
    seed: int = 0  # seed of the train subset, initialisation and sampler
    eval_splits: tuple = EVAL_SPLITS  # splits evaluated: id_val, id_test, val (OOD val), test (OOD test)
    eval_batch_size: int = 512  # batch size for evaluation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = "outputs/runs"  # root folder of run records
    cache_dir: str = "outputs/cache"  # decoded images and frozen features
    image_cache: bool = True  # decode each split once into a uint8 cache (False: PIL every epoch)
    num_workers: int = 0  # DataLoader workers
    save_predictions: bool = True  # write predictions/<split>.parquet (the failure browser needs them)

    def validate(self):
        _choice("dataset", self.dataset, DATASETS)
        _choice("templates", self.templates, TEMPLATE_SETS)
        for name in ("root_dir", "model", "output_dir", "cache_dir"):
            _text(name, getattr(self, name))
        for name in LOCATIONS:  # relative to the repository root, wherever the kernel started
            setattr(self, name, str(resolve(getattr(self, name))))
        _text("pretrained", self.pretrained, allow_none=True)
        if self.pretrained == TINY_CLIP_WEIGHTS and self.model != TINY_MODEL:
            raise ValueError(f"pretrained={self.pretrained!r} (the default) holds the offline demo's {TINY_MODEL} "
                             f"weights; with model={self.model!r} pass a tag such as pretrained='openai', a weights "
                             "file, or pretrained=None (random init; also for 'local-dir:' models, which hold theirs)")
        _integer("seed", self.seed)
        if isinstance(self.eval_splits, str) or not isinstance(self.eval_splits, (list, tuple)):
            raise ValueError(f"eval_splits={self.eval_splits!r} must be a list of splits, e.g. ['id_val', 'test']")
        self.eval_splits = tuple(self.eval_splits)
        for split in self.eval_splits:
            _choice("eval_splits", split, SPLITS)
        self.eval_splits = dataset_splits(self.dataset, self.eval_splits)  # the default: the splits it has
        _integer("eval_batch_size", self.eval_batch_size, low=1)
        _integer("num_workers", self.num_workers)
        for name in ("download", "image_cache", "save_predictions"):
            _flag(name, getattr(self, name))
        if not (self.device in ("auto", "cpu") or str(self.device).startswith("cuda")):
            raise ValueError(f"device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not str(self.experiment).replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"experiment={self.experiment!r} must be letters, digits, '-' or '_' (it names a folder)")
        return self

    def params(self) -> dict[str, Any]:
        """Every parameter as plain JSON-able values (for the run record)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.params().items() if k not in NOT_IDENTITY}


@dataclass
class ZeroShotConfig(RunConfig):
    """01_zero_shot: CLIP with a prompt head, no training."""
    method: str = "zeroshot"

    def validate(self):
        super().validate()
        _choice("method", self.method, ("zeroshot",))
        return self


# Training knobs a probe never reads: left out of a probe's identity.
TRAINING_FIELDS = ("lr", "epochs", "optimizer", "weight_decay", "scheduler", "step_size", "gamma", "warmup_epochs",
                   "sampler", "augment", "text_mode", "select_metric", "swa", "swa_last_k", "swa_lr", "ema_decay",
                   "wise_alphas", "precision", "grad_clip", "batch_size", "train_blocks")


@dataclass
class FinetuneConfig(RunConfig):
    """02_few_shot_sweep and 03_swa_ablation: one (fraction, seed, method, lr) training run."""
    method: str = "finetune"  # linear_probe | finetune | flyp | lp_ft | vision_only | vision_only_probe
    fraction: float = 1.0  # share of the WILDS train split, in (0, 1]
    stratify: bool = False  # keep every class in small subsets
    batch_size: int = 128  # training batch size (the study: 128)
    lr: float = 1e-4  # learning rate (the study swept 1e-2 .. 1e-5)
    epochs: int = 20  # training epochs (the study: 20)
    optimizer: str = "adam"  # adam (the study: L2 weight decay) | adamw
    weight_decay: float = 1e-4  # L2 weight decay (the study: 1e-4)
    scheduler: str = "step"  # step (StepLR, the study) | cosine (with warm-up)
    step_size: int = 15  # StepLR period in epochs (the study: 15)
    gamma: float = 0.1  # StepLR factor (the study: 0.1)
    warmup_epochs: int = 0  # linear warm-up epochs (cosine schedule)
    sampler: str = "group_uniform"  # group_uniform (the study) | shuffle
    augment: bool = False  # the study's flip / ColorJitter / rotation
    text_mode: str = "trainable"  # trainable (both towers, the study) | frozen (zero-shot head, WiSE-FT style)
    train_blocks: int | None = None  # train only the image tower's last k transformer blocks (None: all; 0: none)
    select_split: str = "id_val"  # checkpoint selection: id_val | val, never a test split
    select_metric: str | None = None  # None: the dataset's headline metric on select_split
    swa: bool = True  # average the weights of the last swa_last_k epochs (SWA)
    swa_last_k: int = 10  # average the last K epochs (the study: last 10 of 20)
    swa_lr: float = 1e-4  # SWALR target learning rate (the study: 1e-4)
    ema_decay: float | None = None  # e.g. 0.999 (per step); None disables EMA
    wise_alphas: tuple = ()  # WiSE-FT mixing weights evaluated, e.g. [0.0, 0.25, 0.5, 0.75] (0.0: the zero-shot end)
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    grad_clip: float | None = None  # max gradient norm, None for no clipping
    probe_cs: tuple = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried by the linear probe (on select_split)
    vision_arch: str = "clip-visual"  # vision-only baseline: clip-visual (model's image tower) | vit_b_32 | tiny
    vision_weights: str | None = TINY_VISION_WEIGHTS  # a file | imagenet (vit_b_32) | None: random (clip-visual: CLIP's)
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    compile: bool = False  # torch.compile the model for the training steps (first epoch pays the compile)
    keep_weights: bool = False  # keep the final weights (float16 safetensors) in the run folder, for model soups

    def validate(self):
        super().validate()
        _choice("method", self.method, TRAINED_METHODS)
        _number("fraction", self.fraction, 0, 1, low_open=True)
        _integer("batch_size", self.batch_size, low=1)
        _number("lr", self.lr, 0, low_open=True)
        _integer("epochs", self.epochs, low=1)
        _choice("optimizer", self.optimizer, ("adam", "adamw"))
        _number("weight_decay", self.weight_decay, 0)
        _choice("scheduler", self.scheduler, ("step", "cosine"))
        _integer("step_size", self.step_size, low=1)
        _number("gamma", self.gamma, 0, 1, low_open=True)
        _integer("warmup_epochs", self.warmup_epochs)
        _choice("sampler", self.sampler, ("group_uniform", "shuffle"))
        _choice("text_mode", self.text_mode, ("trainable", "frozen"))
        if self.train_blocks is not None:  # checked against the model's number of blocks when it is built
            try:
                _integer("train_blocks", self.train_blocks)
            except ValueError as e:
                raise ValueError(f"{e}, or None (train every block)") from None
        if self.select_split not in VALIDATION_SPLITS:
            raise ValueError(f"select_split={self.select_split!r}: choices are made on a validation split "
                             f"({list(VALIDATION_SPLITS)}), never on a test split")
        _text("select_metric", self.select_metric, allow_none=True)
        _integer("swa_last_k", self.swa_last_k, low=1)
        if self.swa and self.swa_last_k > self.epochs:
            raise ValueError(f"swa_last_k={self.swa_last_k} exceeds epochs={self.epochs}")
        _number("swa_lr", self.swa_lr, 0, low_open=True)
        _number("ema_decay", self.ema_decay, 0, 1, low_open=True, allow_none=True)
        if self.ema_decay == 1:
            raise ValueError("ema_decay=1 never moves; use a value in (0, 1)")
        self.wise_alphas = tuple(float(a) if isinstance(a, int) and not isinstance(a, bool) else a
                                 for a in self._sequence("wise_alphas"))
        for a in self.wise_alphas:
            _number("wise_alphas", a, 0, 1)
        if len(set(self.wise_alphas)) != len(self.wise_alphas):
            raise ValueError(f"wise_alphas={list(self.wise_alphas)} has duplicates")
        _choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _number("grad_clip", self.grad_clip, 0, low_open=True, allow_none=True)
        self.probe_cs = tuple(self._sequence("probe_cs"))
        if not self.probe_cs:
            raise ValueError("probe_cs is empty; give inverse L2 strengths, e.g. [0.1, 1.0, 10.0]")
        for c in self.probe_cs:
            _number("probe_cs", c, 0, low_open=True)
        self.probe_cs = tuple(float(c) for c in self.probe_cs)
        _choice("vision_arch", self.vision_arch, ("vit_b_32", "tiny", "clip-visual"))
        _text("vision_weights", self.vision_weights, allow_none=True)
        if self.vision_weights == "imagenet" and self.vision_arch != "vit_b_32":
            raise ValueError("vision_weights='imagenet' exists only for vision_arch='vit_b_32'")
        if (self.method in VISION_METHODS and self.vision_weights == TINY_VISION_WEIGHTS
                and (self.vision_arch, self.model) != ("clip-visual", TINY_MODEL)):
            raise ValueError(f"vision_weights={self.vision_weights!r} (the default) is the offline demo's "
                             f"{TINY_MODEL} image tower: it needs vision_arch='clip-visual' and model={TINY_MODEL!r}. "
                             "For ViT-B/32 pass vision_arch='vit_b_32', vision_weights='imagenet'")
        _integer("checkpoint_every", self.checkpoint_every, low=1)
        for name in ("stratify", "augment", "swa", "compile", "keep_weights"):
            _flag(name, getattr(self, name))
        return self

    def _sequence(self, name: str):
        value = getattr(self, name)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r} must be a list")
        return value

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        if self.method in PROBE_METHODS:  # a probe reads no training knob
            ident = {k: v for k, v in ident.items() if k not in TRAINING_FIELDS}
        elif self.method != "lp_ft":  # only LP-FT's first stage is a probe
            del ident["probe_cs"]
        if self.method not in VISION_METHODS:
            del ident["vision_arch"], ident["vision_weights"]
        if ident.get("train_blocks", 0) is None:  # the default (every block) keeps earlier run ids valid
            del ident["train_blocks"]
        if self.method == "flyp":  # FLYP trains both towers by definition: text_mode is not read
            ident.pop("text_mode", None)
        return ident


def from_params(cls, params: Mapping[str, Any]):
    """Build and validate a config from a mapping, naming unknown keys."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    return cls(**dict(params)).validate()


def from_namespace(cls, namespace: Mapping[str, Any], **overrides):
    """A validated config of `cls` from a notebook's globals (its parameters), plus overrides.
    Names the dataclass does not know (notebook-only parameters such as `force`) are ignored; a name
    papermill injected that the notebook does not declare (a typo) stops it here."""
    from .pipeline.notebook_params import check_injected

    check_injected(namespace)
    names = {f.name for f in fields(cls)}
    return from_params(cls, {**{k: namespace[k] for k in names if k in namespace}, **overrides})


def sweep_configs(namespace, methods, lrs) -> list[FinetuneConfig]:
    """The FinetuneConfig of each (method, lr) of one sweep point (02_few_shot_sweep), in order.
    Probes have no learning rate (their L2 strength is chosen on validation), so they run once."""
    from .pipeline.notebook_params import check_injected

    check_injected(namespace)  # first: a typo, or `-p methods "[...]"` (text), named as such
    if isinstance(methods, str) or not list(methods):
        raise ValueError(f"methods={methods!r} must be a non-empty list, e.g. ['linear_probe', 'finetune']")
    if isinstance(lrs, (str, int, float)) or not list(lrs):
        raise ValueError(f"lrs={lrs!r} must be a non-empty list of learning rates, e.g. [1.0e-4, 1.0e-5]")
    for m in methods:
        if m not in TRAINED_METHODS:
            hint = " ('zeroshot' runs in 01_zero_shot.ipynb)" if m == "zeroshot" else ""
            raise ValueError(f"methods: {m!r} is not a trained method; choose from {list(TRAINED_METHODS)}{hint}")
    return [from_namespace(FinetuneConfig, namespace, method=m, lr=lr)
            for m in dict.fromkeys(methods) for lr in (lrs[:1] if m in PROBE_METHODS else dict.fromkeys(lrs))]


def config_of(method: str):
    """The config class of a method's notebook family."""
    return ZeroShotConfig if method == "zeroshot" else FinetuneConfig
