"""How each method builds its weights, read from its `config.METHODS` spec (never its name), and
`run(cfg)`: data -> model -> train / average -> evaluate -> run folder. The builders return logits per
weight variant and split; `run` reuses a finished run or claims it with a file lock, evaluates with
WILDS's metrics and writes atomically. Under torchrun every rank calls `run`; rank 0 decides and writes.
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import devices
from .averaging import interpolate
from .config import METHODS, FinetuneConfig
from .data import (CLASS_NAMES_FILE, class_names, dataset_spec, fraction_indices, headline_metric, load_dataset,
                   metadata_column, prompt_functions, split_indices)
from .evaluate import calibration_record, evaluate_logits, image_batches, predict_logits, wilds_metrics
from .images import Normalize, SplitCache, image_split
from .inputs import up_front_problem, vision_image_size, weights_location, weights_of
from .models import (ClipClassifier, encode_images, fit_linear_probe, identical_prompt_classes, load_clip,
                     vision_only)
from .data.splits import subset_rows
from .models.features import cached_split_features, content_key
from .models.partial import TRAINABLE
from .devices import resolve_device, resolve_precision
from .runs import Run
from .losses import AFTER_STEP, LOSSES, backbone_parameters
from .train import fit


@dataclass
class Context:
    """What every method reads: the config, the WILDS dataset, the device, names and prompts, and
    the run folder being built (its checkpoint and kept weights; None where no run is written)."""
    cfg: object
    dataset: object
    device: torch.device
    run: Run | None = None  # `Run.of` hashes the inputs (a dataset scan): computed once, in `run`
    identical_prompts: list | None = None  # classes whose prompts are the same (the record's field)

    @property
    def spec(self):
        return dataset_spec(self.cfg.dataset)

    @property
    def method(self):
        return METHODS[self.cfg.method]

    def zero_shot_classifier(self, bundle, text_mode: str) -> ClipClassifier:
        """The zero-shot classifier; classes whose prompts are identical (real iWildCam has four) are
        warned of with the remedy, and kept for the record."""
        names = class_names(self.cfg.dataset, self.dataset)  # from the dataset's own files where it has them
        prompts = prompt_functions(self.spec.templates(self.cfg.templates))
        groups = identical_prompt_classes(bundle.tokenizer, names, prompts)
        if groups:
            self.identical_prompts = [[{"y": y, "name": names[y]} for y in g] for g in groups]
            warnings.warn(f"{self.cfg.dataset}: classes with identical prompts, so their logits tie on every image and "
                          "only the lowest y of each group is ever predicted: " + "; ".join(" = ".join(
                              f"{y} {names[y]!r}" for y in g) for g in groups) + ". To tell them apart, name them "
                          f"differently in {Path(self.dataset.data_dir) / CLASS_NAMES_FILE} (rows y,name; part of "
                          "the data fingerprint, so runs are redone)", UserWarning, stacklevel=2)
        return ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, names, prompts, text_mode=text_mode)

    def indices(self, split: str) -> np.ndarray:
        return split_indices(self.dataset, split)

    def train_indices(self) -> np.ndarray:
        return fraction_indices(self.dataset, self.cfg.fraction, self.cfg.seed, self.cfg.stratify)

    def images(self, indices, image_size: int):
        return image_split(self.dataset, indices, image_size, cache=self.cfg.image_cache,
                           cache_dir=Path(self.cfg.cache_dir) / "decoded")

    def features(self, encoder, preprocessing: dict, split: str, indices=None) -> torch.Tensor:
        """Frozen features of a split (cached per weights and preprocessing), or of its given indices."""
        cfg, split_idx = self.cfg, self.indices(split)
        # by content: the weights' digest and the identity of the decoded images, not their paths
        decoded = SplitCache(self.dataset, split, preprocessing["image_size"], Path(cfg.cache_dir) / "decoded").key
        identity = {"dataset": cfg.dataset, "version": self.dataset.version, "split": split, "decoded": decoded,
                    "preprocessing": content_key(preprocessing, cfg.cache_dir)}

        def compute():
            images = self.images(split_idx, preprocessing["image_size"])
            norm = Normalize(preprocessing["mean"], preprocessing["std"])
            batches = image_batches(images, cfg.eval_batch_size, cfg.num_workers, self.device)
            return encode_images(encoder, (norm(x) for x, _, _ in batches), device=self.device, normalize=False)

        feats = cached_split_features(Path(cfg.cache_dir) / "features", identity, compute)
        return feats if indices is None else feats[torch.as_tensor(subset_rows(split_idx, np.asarray(indices)))]

    def predictor(self, norm: Normalize, size: int) -> Callable[[torch.nn.Module, str], torch.Tensor]:
        """`logits_of(model, split)` on the evaluated and the selection splits, their images decoded now."""
        cfg, precision = self.cfg, resolve_precision(self.cfg.precision, self.device)
        images = {s: self.images(self.indices(s), size) for s in set(cfg.eval_splits) | {cfg.select_split}}
        return lambda model, split: predict_logits(model, images[split], norm, self.device, cfg.eval_batch_size,
                                                   precision)

    def scored(self, logits: dict, headline: str) -> tuple[dict, dict]:
        """WILDS metrics per weight variant and split (predictions written into `run`, the headline's at
        its top) and the record's calibration (per variant and split, temperature fitted on id_val)."""
        metrics, y = {}, np.asarray(self.dataset.y_array)
        for variant, per_split in logits.items():
            metrics[variant] = {}
            for split, split_logits in per_split.items():
                metrics[variant][split], frame = evaluate_logits(self.dataset, self.indices(split), split_logits, split)
                if self.cfg.save_predictions:
                    self.run.write_predictions(split, frame, None if variant == headline else variant)
        return metrics, calibration_record(logits, {s: y[self.indices(s)] for s in self.cfg.eval_splits},
                                           getattr(self.cfg, "select_split", None))


@dataclass
class Outcome:
    """What a method hands back: logits per weight variant and split, and what it chose."""
    logits: dict  # variant -> split -> logits [N, C]
    selection: dict
    extra: dict


def _clip(cfg):
    """(CLIP bundle, its preprocessing: the key of its cached features)."""
    if cfg.pretrained is None:
        torch.manual_seed(cfg.seed)  # random init (tiny configs, tests) is seeded, hence reproducible
    bundle = load_clip(cfg.model, weights_location(cfg.pretrained), device="cpu")
    return bundle, {"encoder": "clip", "model": cfg.model, "pretrained": cfg.pretrained,
                    "init_seed": cfg.seed if cfg.pretrained is None else None,
                    "image_size": bundle.image_size, "mean": list(bundle.mean), "std": list(bundle.std)}


def _vision_model(cfg):
    """(vision-only model, its preprocessing: the key of its cached features)."""
    n = dataset_spec(cfg.dataset).n_classes
    if cfg.vision_arch == "clip-visual":
        # its own weights file, else the CLIP model's image tower as pretrained
        what, weights = ("vision_weights", cfg.vision_weights) if cfg.vision_weights is not None \
            else ("pretrained", cfg.pretrained)
        weights = weights_location(weights)
        if weights is None:
            torch.manual_seed(cfg.seed)
        model = vision_only(n, arch="clip-visual", clip=load_clip(cfg.model, weights, device="cpu", weights_arg=what))
    else:
        torch.manual_seed(cfg.seed)
        model = vision_only(n, arch=cfg.vision_arch, weights=weights_location(cfg.vision_weights),
                            image_size=vision_image_size(cfg))
    return model, {"encoder": "vision", "arch": cfg.vision_arch, "weights": cfg.vision_weights, "model": cfg.model,
                   "pretrained": cfg.pretrained, "init_seed": cfg.seed, "image_size": model.image_size,
                   "mean": list(model.mean), "std": list(model.std)}


def zero_shot(ctx: Context) -> Outcome:
    """CLIP with open_clip's zero-shot head (prompts from the templates) on every split."""
    cfg = ctx.cfg
    bundle, pre = _clip(cfg)
    clf = ctx.zero_shot_classifier(bundle, "frozen")
    with torch.no_grad():
        logits = {s: clf.head(torch.nn.functional.normalize(ctx.features(bundle.model, pre, s), dim=-1)).float()
                  for s in cfg.eval_splits}
    return Outcome({"zeroshot": logits}, {"split": None, "metric": None, "note": "no choice made"}, {})


def _probe(ctx: Context, encoder, pre: dict):
    """A linear probe on frozen features; its L2 strength chosen on cfg.select_split only."""
    cfg = ctx.cfg
    train_idx, val_idx = ctx.train_indices(), ctx.indices(cfg.select_split)
    y = torch.as_tensor(np.asarray(ctx.dataset.y_array))
    metric = selection_metric(cfg)  # like every other choice: iWildCam's F1-macro_all, not accuracy

    def score(y_true, y_pred) -> float:
        return wilds_metrics(ctx.dataset, val_idx, y_pred.numpy())[metric]

    probe = fit_linear_probe(ctx.features(encoder, pre, "train", train_idx), y[train_idx],
                             ctx.features(encoder, pre, cfg.select_split), y[val_idx],
                             n_classes=ctx.spec.n_classes, Cs=cfg.probe_cs, seed=cfg.seed, score_fn=score)
    return probe, train_idx


def linear_probe(ctx: Context) -> Outcome:
    """A linear probe on the frozen features of CLIP's or the vision-only image tower (spec.encoder)."""
    cfg = ctx.cfg
    if ctx.method.encoder == "clip":
        bundle, pre = _clip(cfg)
        encoder = bundle.model
    else:
        encoder, pre = _vision_model(cfg)
    probe, train_idx = _probe(ctx, encoder, pre)
    logits = {s: probe.logits(ctx.features(encoder, pre, s)).detach() for s in cfg.eval_splits}
    selection = {"split": cfg.select_split, "metric": selection_metric(cfg), "C": probe.C,
                 "val_scores": {str(k): v for k, v in probe.val_scores.items()}}
    return Outcome({"best": logits}, selection, {"n_train": int(len(train_idx))})


def selection_metric(cfg: FinetuneConfig) -> str:
    """The metric checkpoints are chosen by: the dataset's ID headline on id_val, OOD headline on val."""
    return cfg.select_metric or headline_metric(cfg.dataset, cfg.select_split)


def end_to_end(ctx: Context, progress: bool | str = True) -> Outcome | None:
    """Fine-tuning through `train.fit` from the spec's start, with its loss, hooks and `trainable`;
    the variants: the best epoch on validation, the last, the enabled averages and WiSE-FT alphas."""
    cfg, world, method = ctx.cfg, devices.info(), ctx.method
    with world.main_first():  # rank 0 fills the decode and feature caches; the others then read them
        model, (mean, std, size) = initial_model(ctx)
        TRAINABLE[method.trainable](model, cfg)  # which parameters train: the spec's choice
        initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        train_idx, data_started = ctx.train_indices(), time.perf_counter()
        norm = Normalize(mean, std)
        train_images, logits_of = ctx.images(train_idx, size), ctx.predictor(norm, size)
        data_s = time.perf_counter() - data_started  # decoding (or reading the decode cache)
    metric = selection_metric(cfg)

    def evaluate(m):  # selection reads only the validation split named in the config
        metrics, _ = evaluate_logits(ctx.dataset, ctx.indices(cfg.select_split), logits_of(m, cfg.select_split),
                                     cfg.select_split)
        return metrics[metric], {f"{cfg.select_split}/{k}": v for k, v in metrics.items() if not k.startswith("count_")}

    trained = fit(model, train_images, metadata_column(ctx.dataset, ctx.spec.sampler_field)[train_idx], cfg,
                  normalize=norm, device=ctx.device, evaluate=evaluate, checkpoint_dir=ctx.run.checkpoint_dir,
                  progress=progress, score_name=f"{cfg.select_split}/{metric}", desc=f"{cfg.method} lr={cfg.lr:g}",
                  loss_fn=LOSSES[method.loss](model, cfg),
                  after_step=AFTER_STEP[method.after_step] if method.after_step else None,
                  no_decay=backbone_parameters(model) if method.weight_decay_on == "head" else ())
    if not world.is_main:
        return None
    states = {"best": trained.best_state, "last": trained.last_state}
    if "averages" in method.variants:
        states.update(trained.variants)
    if cfg.wise_alphas and "wise_ft" not in method.variants:
        warnings.warn(f"wise_alphas ignored for {cfg.method}: it has no zero-shot end point", stacklevel=2)
    elif cfg.wise_alphas:  # WiSE-FT: from the zero-shot (or LP) start to the final fine-tuned weights
        states.update({f"wise_ft_{float(a):g}": interpolate(initial_state, trained.last_state, a)
                       for a in cfg.wise_alphas})
    started, logits = time.perf_counter(), {}
    for variant, state in states.items():
        # weights equal to an earlier variant's (e.g. the best epoch is the last) give its logits
        same = next((v for v in logits if states[v].keys() == state.keys()
                     and all(torch.equal(states[v][k], state[k]) for k in state)), None)
        if same is not None:
            logits[variant] = logits[same]
            continue
        model.load_state_dict(state)
        logits[variant] = {s: logits_of(model, s) for s in cfg.eval_splits}
    selection = {"split": cfg.select_split, "metric": metric, "epoch": trained.best_epoch, "score": trained.best_score}
    extra = {"history": trained.history, "n_train": int(len(train_idx)),
             "resumed_from_epoch": trained.resumed_from_epoch,
             "kept_weights": ctx.run.keep_weights(trained.last_state) if cfg.keep_weights else None,
             "timings": {"data_s": data_s, "train_s": trained.train_seconds, "eval_s": time.perf_counter() - started}}
    return Outcome(logits, selection, extra)


def initial_model(ctx: Context, fit_probe: bool = True):
    """The model at the spec's start, with its image (mean, std, size). `fit_probe=False` gives a
    probe-first method an untrained head of the right shape (`soups` load kept weights into it)."""
    cfg, method = ctx.cfg, ctx.method
    if method.init == "vision_tower":
        model, _ = _vision_model(cfg)
        return model, (model.mean, model.std, model.image_size)
    bundle, pre = _clip(cfg)
    if method.init == "probe_first":
        if fit_probe:
            probe, _ = _probe(ctx, bundle.model, pre)
            weight, bias = probe.W, probe.b
        else:
            n, dim = ctx.spec.n_classes, bundle.model.visual.output_dim
            weight, bias = torch.zeros(n, dim), torch.zeros(n)
        model = ClipClassifier.from_linear_probe(bundle.model, weight, bias)
    else:
        model = ctx.zero_shot_classifier(bundle, method.text_mode or cfg.text_mode)
    return model, (bundle.mean, bundle.std, bundle.image_size)


# The builder of each kind of training (config.MethodSpec.trains).
BUILDERS: dict[str, Callable] = {"nothing": zero_shot, "probe": linear_probe, "end_to_end": end_to_end}


def _check_specs() -> None:
    """Every spec's loss, hook and `trainable` exist (at import: not after an hour of caching features);
    here, not in config.py, which names them without importing torch."""
    for spec in METHODS.values():
        for field, where, table in (("loss", "losses.LOSSES", LOSSES), ("after_step", "losses.AFTER_STEP", AFTER_STEP),
                                    ("trainable", "models.partial.TRAINABLE", TRAINABLE)):
            if (name := getattr(spec, field)) is not None and name not in table:
                raise ValueError(f"MethodSpec {spec.name!r}: field {field!r} names {name!r}, not in {where} "
                                 f"({sorted(table)})")


_check_specs()


def run(cfg, force: bool = False, progress: bool | str = True) -> dict | None:
    """Run one config; returns its record (None on torchrun ranks other than 0). A finished run of the
    same identity is returned as it is unless `force`, marked `reused: True`; a run is claimed with a
    file lock, so a second process asking for it waits and reads the record."""
    from filelock import FileLock

    cfg = cfg.validate()
    world, target = devices.info(), Run.of(cfg)
    # Decided by rank 0 and shared, so all ranks stop or go on together. `reused` (not in result.json)
    # tells the notebook nothing was trained.
    if world.broadcast(not force and target.is_done()):
        return {**target.record(), "reused": True} if world.is_main else None
    # Checked before any computation (a finished run, above, may be read from a read-only folder);
    # rank 0 checks and every rank stops together.
    problem = world.broadcast(up_front_problem(cfg) if world.is_main else None)
    if problem is not None:
        raise problem
    target.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(target.lock_path)) if world.is_main else nullcontext():
            # Another process may have finished it while we waited for the lock.
            if world.broadcast(not force and target.is_done()):
                return {**target.record(), "reused": True} if world.is_main else None
            started = time.perf_counter()
            ctx = Context(cfg, load_dataset(cfg.dataset, cfg.root_dir, download=cfg.download),
                          resolve_device(cfg.device), target)
            load_s = time.perf_counter() - started
            outcome = end_to_end(ctx, progress=progress) if ctx.method.end_to_end else BUILDERS[ctx.method.trains](ctx)
            if outcome is None:  # a torchrun rank other than 0: training done, rank 0 writes
                return None
            return _finish(target, ctx, outcome, time.perf_counter() - started, load_s)
    finally:
        world.barrier()


def _finish(target: Run, ctx: Context, outcome: Outcome, seconds: float, load_s: float = 0.0) -> dict:
    """The record, built aside and renamed into place. `timings` (seconds): data_s (loading the dataset,
    decoding images), train_s and eval_s (logits) where the method reports them, write_s (the rest)."""
    cfg, write_started, spec = ctx.cfg, time.perf_counter(), ctx.method
    headline = spec.variants[0]
    extra = dict(outcome.extra)
    variants, extra["calibration"] = ctx.scored(outcome.logits, headline)
    timings = {**extra.pop("timings", {}), "total_s": seconds}
    timings["data_s"] = load_s + timings.get("data_s", 0.0)
    timings["write_s"] = time.perf_counter() - write_started
    timings["total_s"] += timings["write_s"]
    record = {
        "run_id": target.id, "experiment": cfg.experiment, "dataset": cfg.dataset, "method": cfg.method,
        "fraction": cfg.fraction if spec.trains != "nothing" else 0.0, "seed": cfg.seed,
        "lr": cfg.lr if spec.has_lr else None, "tuned": {k: getattr(cfg, k) for k in spec.tuned} or None,
        "root_dir": str(cfg.root_dir), "weights": weights_of(cfg),  # "random init" when pretrained=None
        "params": cfg.params(), "identity": target.identity, "inputs": target.inputs,
        "metrics": variants[headline], "selection": {**outcome.selection, "variant": headline},
        "variants": variants if len(variants) > 1 else None, "timings": timings,
        "identical_prompts": ctx.identical_prompts, **extra}
    return target.finish({k: v for k, v in record.items() if v is not None or k == "lr"})
