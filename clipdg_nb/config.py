"""One dataclass per notebook family, with its choices, validated once at the boundary; and the
method registry `METHODS`, one `MethodSpec` per method, that everything else reads.

Each notebook's `parameters` cell shows the fields of its dataclass that its users change, typed
(a test keeps the two in step); papermill injects overrides and `from_namespace` turns the
notebook's globals into a validated config. Inside the package, values are trusted.
`identity()` is what changes a run's numbers: it names the run folder and decides whether a
finished run can be reused; where files live or how big an evaluation batch is never enters it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .data import DATASETS, EVAL_SPLITS, SPLITS, TEMPLATE_SETS, check_select_split, dataset_splits
from .paths import resolve

# The offline default (`make demo`, or `clipdg synth && clipdg pretrain-tiny`): synthetic data and a
# tiny CLIP pretrained on a synthetic caption corpus, plus its supervised image tower as the
# vision-only baseline. Relative paths resolve from the repository root. `pretrained=None` (given
# explicitly) is a randomly initialised CLIP, and every output of such a run says so.
DEMO_DATA = "outputs/data"
TINY_CLIP_WEIGHTS = "outputs/cache/pretrain/tiny-clip.safetensors"
TINY_VISION_WEIGHTS = "outputs/cache/pretrain/tiny-vision.safetensors"
TINY_MODEL = "clipdg-tiny-vit"  # the model those weights belong to

# Training sizes: the defaults are the demo's, for the offline tiny model; the study's (paper_*.yaml) are these.
PAPER_SIZES = {"epochs": 20, "batch_size": 128, "step_size": 15, "swa_last_k": 10}
LOCATIONS = ("root_dir", "output_dir", "cache_dir")  # folders; relative ones resolve from the repository root
# Where files live and how work is batched or placed: never part of a run's identity.
NOT_IDENTITY = ("experiment", "root_dir", "download", "output_dir", "cache_dir", "eval_batch_size", "device",
                "image_cache", "num_workers", "save_predictions", "checkpoint_every", "checkpoint_minutes", "compile",
                "keep_weights")
# The fields in a run's identity even at their default. Frozen: any other field enters only where it
# differs from its default, so a new field never changes existing run ids (nor may that default change).
IDENTITY_AT_DEFAULT = ("dataset", "model", "pretrained", "templates", "seed", "eval_splits", "method", "fraction",
                       "stratify", "batch_size", "lr", "epochs", "optimizer", "weight_decay", "scheduler", "step_size",
                       "gamma", "warmup_epochs", "sampler", "augment", "text_mode", "select_split", "select_metric",
                       "swa", "swa_last_k", "swa_lr", "ema_decay", "wise_alphas", "precision", "grad_clip",
                       "l2sp_alpha", "probe_cs", "vision_arch", "vision_weights")


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


# ---------------------------------------------------------------------------------------------
# The method registry: a method is one spec
# ---------------------------------------------------------------------------------------------

# Training knobs: read by the methods that train end to end, never by a probe.
TRAINING_FIELDS = ("lr", "epochs", "optimizer", "weight_decay", "scheduler", "step_size", "gamma", "warmup_epochs",
                   "sampler", "augment", "select_metric", "swa", "swa_last_k", "swa_lr", "ema_decay",
                   "wise_alphas", "precision", "grad_clip", "batch_size", "train_blocks")
PROBE_FIELDS = ("probe_cs",)  # the probe's L2 strengths (probes, and LP-FT's first stage)
VISION_FIELDS = ("vision_arch", "vision_weights")  # the vision-only encoder
# Read by every trained method (and so in every trained run's identity), besides RunConfig's fields.
SHARED_FIELDS = ("method", "fraction", "stratify", "select_split")
TRAINS = ("nothing", "probe", "end_to_end")
INITS = ("zero_shot_head", "probe_first", "vision_tower", "frozen_features")
ENCODERS = ("clip", "vision")
VARIANT_KINDS = ("zeroshot", "best", "last", "averages", "wise_ft")
_REQUIRED = object()


@dataclass(frozen=True)
class MethodSpec:
    """Everything the package knows about one method. `config.identity()`, validation, the sweep,
    `methods.run`, the inputs check and the tables read it; nothing else branches on method names.

    Declarative (names, not functions), so this module stays free of torch: `methods.py` resolves
    `loss` in `losses.LOSSES` and `after_step` in `losses.AFTER_STEP` and checks them at import.
    """
    name: str = _REQUIRED
    summary: str = _REQUIRED  # one line for the notebooks' help
    trains: str = _REQUIRED  # nothing (zero-shot) | probe (on frozen features) | end_to_end (train.fit)
    init: str = _REQUIRED  # zero_shot_head | probe_first (LP-FT) | vision_tower (new head) | frozen_features
    encoder: str = _REQUIRED  # clip | vision (vision_arch / vision_weights)
    # FinetuneConfig fields it reads beyond RunConfig's and SHARED_FIELDS: its identity keeps exactly these.
    reads: tuple = _REQUIRED
    # Its weight variants, the first the headline: zeroshot | best | last | averages (averaging.AVERAGES,
    # where enabled) | wise_ft (cfg.wise_alphas, from the initial weights: needs a zero-shot end point).
    variants: tuple = _REQUIRED
    # Fields besides lr chosen on validation like it: 02 tries each value of its list `<field>s`
    # (e.g. l2sp_alphas) and `analysis.select_lr` chooses among the runs' (lr, these) settings.
    tuned: tuple = ()
    loss: str | None = None  # end_to_end: a name in losses.LOSSES
    after_step: str | None = None  # a name in losses.AFTER_STEP, called after each optimizer step
    text_mode: str | None = None  # forces the text tower's mode (FLYP: trainable); None: cfg.text_mode
    # Which parameters train end to end: a name in models.partial.TRAINABLE (last_blocks: the image
    # tower's last cfg.train_blocks blocks and all else; biases_and_head: BitFit). Nothing else freezes.
    trainable: str = "last_blocks"
    # What the optimizer's weight decay acts on: every trainable parameter ('all', the study), or
    # the head only ('head': L2-SP as published, whose loss pulls the backbone toward its start
    # instead of toward zero). Not 'all' is in the run's identity (`weight_decay_on`).
    weight_decay_on: str = "all"

    def __post_init__(self):
        name = self.name if self.name is not _REQUIRED else "<unnamed>"
        for f in fields(self):
            if getattr(self, f.name) is _REQUIRED:
                raise TypeError(f"MethodSpec {name!r}: required field {f.name!r} is missing")
        for field_name, choices in (("trains", TRAINS), ("init", INITS), ("encoder", ENCODERS),
                                    ("weight_decay_on", ("all", "head"))):
            if getattr(self, field_name) not in choices:
                raise ValueError(f"MethodSpec {name!r}: {field_name}={getattr(self, field_name)!r}; choose one of "
                                 f"{list(choices)}")
        bad = [v for v in self.variants if v not in VARIANT_KINDS]
        if not self.variants or bad:
            raise ValueError(f"MethodSpec {name!r}: variants={self.variants!r}; name some of {list(VARIANT_KINDS)}")
        if (self.loss is None) == (self.trains == "end_to_end"):
            raise ValueError(f"MethodSpec {name!r}: field 'loss' is required for (and only for) end_to_end methods")
        if self.init == "probe_first" and self.encoder != "clip" or self.init == "vision_tower" and self.encoder != "vision":
            raise ValueError(f"MethodSpec {name!r}: init={self.init!r} does not go with encoder={self.encoder!r}")

    @property
    def end_to_end(self) -> bool:
        return self.trains == "end_to_end"

    @property
    def has_lr(self) -> bool:
        """Probes choose their L2 strength on validation instead; zero-shot trains nothing."""
        return "lr" in self.reads


def _register(*specs: MethodSpec) -> dict[str, MethodSpec]:
    return {spec.name: spec for spec in specs}


E2E_VARIANTS = ("best", "last", "averages", "wise_ft")
METHODS: dict[str, MethodSpec] = _register(
    MethodSpec("zeroshot", "CLIP with the zero-shot prompt head, no training (01_zero_shot)", trains="nothing",
               init="zero_shot_head", encoder="clip", reads=(), variants=("zeroshot",)),
    MethodSpec("linear_probe", "a linear probe on frozen CLIP image features", trains="probe",
               init="frozen_features", encoder="clip", reads=PROBE_FIELDS, variants=("best",)),
    MethodSpec("finetune", "CLIP end to end from the zero-shot head, cross-entropy (the study)", trains="end_to_end",
               init="zero_shot_head", encoder="clip", reads=TRAINING_FIELDS + ("text_mode",), variants=E2E_VARIANTS,
               loss="cross_entropy"),
    MethodSpec("flyp", "both towers with CLIP's contrastive loss against the class prompts", trains="end_to_end",
               init="zero_shot_head", encoder="clip", reads=TRAINING_FIELDS, variants=E2E_VARIANTS, loss="flyp",
               after_step="clamp_logit_scale", text_mode="trainable"),
    MethodSpec("lp_ft", "a linear probe first, then CLIP's image tower and that head end to end", trains="end_to_end",
               init="probe_first", encoder="clip", reads=TRAINING_FIELDS + ("text_mode",) + PROBE_FIELDS,
               variants=E2E_VARIANTS, loss="cross_entropy"),
    # text_mode and wise_alphas are not read (no text tower, no zero-shot end point) but stay in its
    # identity, as they always were: its run ids must not change.
    MethodSpec("vision_only", "a vision-only image tower with a new head, end to end", trains="end_to_end",
               init="vision_tower", encoder="vision", reads=TRAINING_FIELDS + ("text_mode",) + VISION_FIELDS,
               variants=("best", "last", "averages"), loss="cross_entropy"),
    MethodSpec("vision_only_probe", "a linear probe on frozen vision-only features", trains="probe",
               init="frozen_features", encoder="vision", reads=PROBE_FIELDS + VISION_FIELDS, variants=("best",)),
    MethodSpec("l2sp", "CLIP end to end as finetune, pulled toward its pre-trained weights (L2-SP, Li et al. 2018)",
               trains="end_to_end", init="zero_shot_head", encoder="clip",
               reads=TRAINING_FIELDS + ("text_mode", "l2sp_alpha"), tuned=("l2sp_alpha",), variants=E2E_VARIANTS,
               loss="l2sp", weight_decay_on="head"),
    MethodSpec("bitfit", "only the biases and the zero-shot head train (BitFit, Ben Zaken et al. 2022)",
               trains="end_to_end", init="zero_shot_head", encoder="clip",
               reads=tuple(f for f in TRAINING_FIELDS if f != "train_blocks"), variants=E2E_VARIANTS,
               loss="cross_entropy", text_mode="frozen", trainable="biases_and_head"),
)
TRAINED_METHODS = tuple(name for name, spec in METHODS.items() if spec.trains != "nothing")


def method_spec(name: str) -> MethodSpec:
    _choice("method", name, METHODS)
    return METHODS[name]


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
        """The parameters that change the numbers, less those at their default outside IDENTITY_AT_DEFAULT."""
        default = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                   for f in fields(self)}
        default = {k: list(v) if isinstance(v, tuple) else v for k, v in default.items()}  # as params() has them
        return {k: v for k, v in self.params().items()
                if k not in NOT_IDENTITY and (k in IDENTITY_AT_DEFAULT or v != default[k])}


@dataclass
class ZeroShotConfig(RunConfig):
    """01_zero_shot: CLIP with a prompt head, no training."""
    method: str = "zeroshot"

    def validate(self):
        super().validate()
        _choice("method", self.method, [m for m in METHODS if METHODS[m].trains == "nothing"])
        return self


@dataclass
class FinetuneConfig(RunConfig):
    """02_few_shot_sweep and 03_swa_ablation: one (fraction, seed, method, lr) training run."""
    method: str = "finetune"  # a trained method of config.METHODS: linear_probe, finetune, flyp, lp_ft, ...
    fraction: float = 1.0  # share of the WILDS train split, in (0, 1]
    stratify: bool = False  # keep every class in small subsets
    batch_size: int = 64  # training batch size (the study: 128)
    lr: float = 1e-4  # learning rate (the study swept 1e-2 .. 1e-5)
    epochs: int = 4  # training epochs (the study: 20)
    optimizer: str = "adam"  # adam (the study: L2 weight decay) | adamw
    weight_decay: float = 1e-4  # L2 weight decay (the study: 1e-4)
    scheduler: str = "step"  # step (StepLR, the study) | cosine (with warm-up)
    step_size: int = 3  # StepLR period in epochs (the study: 15)
    gamma: float = 0.1  # StepLR factor (the study: 0.1)
    warmup_epochs: int = 0  # linear warm-up epochs (cosine schedule)
    sampler: str = "group_uniform"  # group_uniform (the study) | shuffle
    augment: bool = False  # the study's flip / ColorJitter / rotation
    text_mode: str = "trainable"  # trainable (both towers, the study) | frozen (zero-shot head, WiSE-FT style)
    train_blocks: int | None = None  # train only the image tower's last k transformer blocks (None: all; 0: none)
    select_split: str = "id_val"  # checkpoint selection: id_val | val, never a test split
    select_metric: str | None = None  # None: the dataset's headline metric on select_split
    swa: bool = True  # average the weights of the last swa_last_k epochs (SWA)
    swa_last_k: int = 2  # average the last K epochs (the study: last 10 of 20)
    swa_lr: float = 1e-4  # SWALR target learning rate (the study: 1e-4)
    ema_decay: float | None = None  # e.g. 0.999 (per step); None disables EMA
    wise_alphas: tuple = ()  # WiSE-FT mixing weights evaluated, e.g. [0.0, 0.25, 0.5, 0.75] (0.0: the zero-shot end)
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    grad_clip: float | None = None  # max gradient norm, None for no clipping
    l2sp_alpha: float = 0.1  # l2sp: strength of the pull toward the pre-trained weights (Li et al. 2018)
    probe_cs: tuple = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried by the linear probe (on select_split)
    vision_arch: str = "clip-visual"  # vision-only baseline: clip-visual (model's image tower) | vit_b_32 | tiny
    vision_weights: str | None = TINY_VISION_WEIGHTS  # a file | imagenet (vit_b_32) | None: random (clip-visual: CLIP's)
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    checkpoint_minutes: float = 0.0  # and at least this many minutes apart (0: no bound); the last epoch's is always kept
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
        check_select_split(self.dataset, self.select_split)
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
        _number("l2sp_alpha", self.l2sp_alpha, 0)
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
        if (METHODS[self.method].encoder == "vision" and self.vision_weights == TINY_VISION_WEIGHTS
                and (self.vision_arch, self.model) != ("clip-visual", TINY_MODEL)):
            raise ValueError(f"vision_weights={self.vision_weights!r} (the default) is the offline demo's "
                             f"{TINY_MODEL} image tower: it needs vision_arch='clip-visual' and model={TINY_MODEL!r}. "
                             "For ViT-B/32 pass vision_arch='vit_b_32', vision_weights='imagenet'")
        _integer("checkpoint_every", self.checkpoint_every, low=1)
        _number("checkpoint_minutes", self.checkpoint_minutes, 0)
        for name in ("stratify", "augment", "swa", "compile", "keep_weights"):
            _flag(name, getattr(self, name))
        return self

    def _sequence(self, name: str):
        value = getattr(self, name)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r} must be a list")
        return value

    def identity(self) -> dict[str, Any]:
        """RunConfig's identity, the fields every trained method reads and those its spec reads."""
        reads = set(RUN_FIELDS) | set(SHARED_FIELDS) | set(METHODS[self.method].reads)
        ident = {k: v for k, v in super().identity().items() if k in reads}
        if METHODS[self.method].weight_decay_on != "all":  # runs of the earlier rule are other runs
            ident["weight_decay_on"] = METHODS[self.method].weight_decay_on
        return ident


RUN_FIELDS = tuple(f.name for f in fields(RunConfig))


def _check_reads() -> None:
    """Each spec reads FinetuneConfig fields only, and each such field is read by some spec or kept
    out of identities on purpose (at import: either slip would silently leave a setting out of the
    run ids)."""
    known = {f.name for f in fields(FinetuneConfig)}
    if unread := known.difference(NOT_IDENTITY, RUN_FIELDS, SHARED_FIELDS, *(s.reads for s in METHODS.values())):
        raise ValueError(f"FinetuneConfig field(s) {sorted(unread)}: no MethodSpec reads them, so no run id holds them; "
                         "add them to the 'reads' of the methods using them (TRAINING_FIELDS: every end-to-end "
                         "method), or to NOT_IDENTITY if they never change the numbers")
    for spec in METHODS.values():
        for name in spec.reads:
            if name not in known:
                raise ValueError(f"MethodSpec {spec.name!r}: field 'reads' names {name!r}, not a FinetuneConfig field")
        for name in spec.tuned:
            if name not in spec.reads or name == "lr":
                raise ValueError(f"MethodSpec {spec.name!r}: field 'tuned' names {name!r}; name fields it reads, "
                                 "besides lr (swept by `lrs` already)")


_check_reads()


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
    from .notebook_kernel import check_injected

    check_injected(namespace)
    names = {f.name for f in fields(cls)}
    return from_params(cls, {**{k: namespace[k] for k in names if k in namespace}, **overrides})


def tuned_lists() -> dict[str, str]:
    """`<field>s` -> field: the list parameters of 02_few_shot_sweep besides `lrs`, one per field
    some method tunes on validation (MethodSpec.tuned)."""
    return {f"{name}s": name for spec in METHODS.values() for name in spec.tuned}


def sweep_configs(namespace, methods, lrs) -> list[FinetuneConfig]:
    """The FinetuneConfig of each (method, lr, tuned values) of one sweep point (02_few_shot_sweep),
    in order. Probes have no learning rate (their L2 strength is chosen on validation), so they run
    once; a method's tuned fields (MethodSpec.tuned) take each value of the namespace's `<field>s`
    list (its scalar field, or the default, when that list is absent)."""
    from .notebook_kernel import check_injected

    check_injected(namespace)  # first: a typo, or `-p methods "[...]"` (text), named as such
    if isinstance(methods, str) or not list(methods):
        raise ValueError(f"methods={methods!r} must be a non-empty list, e.g. ['linear_probe', 'finetune']")
    if isinstance(lrs, (str, int, float)) or not list(lrs):
        raise ValueError(f"lrs={lrs!r} must be a non-empty list of learning rates, e.g. [1.0e-4, 1.0e-5]")
    for m in methods:
        if m not in TRAINED_METHODS:
            hint = f" ({m!r} runs in 01_zero_shot.ipynb)" if m in METHODS else ""
            raise ValueError(f"methods: {m!r} is not a trained method; choose from {list(TRAINED_METHODS)}{hint}")
    configs = []
    for m in dict.fromkeys(methods):
        grid = {"lr": list(dict.fromkeys(lrs)) if METHODS[m].has_lr else lrs[:1]}
        for name in METHODS[m].tuned:
            values = namespace.get(f"{name}s", [namespace.get(name, getattr(FinetuneConfig, name))])
            if isinstance(values, (str, int, float)) or not list(values):
                raise ValueError(f"{name}s={values!r} must be a non-empty list, e.g. [{getattr(FinetuneConfig, name)!r}]")
            grid[name] = list(dict.fromkeys(values))
        configs += [from_namespace(FinetuneConfig, namespace, method=m, **dict(zip(grid, values)))
                    for values in itertools.product(*grid.values())]
    return configs


def sizes_note(cfg) -> str:
    """Which training sizes `cfg` (or the class: the defaults) holds and how to get the paper's: what 02, 03
    and 05 print first, and the comment atop their parameters cells."""
    sizes = {k: getattr(cfg, k) for k in PAPER_SIZES}
    demo, paper = sizes == {k: getattr(FinetuneConfig, k) for k in sizes}, sizes == PAPER_SIZES
    which = "the demo's" if demo else "the paper's" if paper else "your own"
    return (f"profile: {which} sizes ({', '.join(f'{k} {v}' for k, v in sizes.items())})"
            + (", made for the offline tiny model" if demo else "")
            + ("" if paper else "; the paper's: papermill " + " ".join(f"-p {k} {v}" for k, v in PAPER_SIZES.items())))


def config_of(method: str):
    """The config class of a method's notebook family."""
    return ZeroShotConfig if method_spec(method).trains == "nothing" else FinetuneConfig
