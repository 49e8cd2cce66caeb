"""Entry points, one per notebook family: `run_zero_shot(cfg)` and `run_finetune(cfg)`.

Each takes a validated config (config.py), does data -> model -> train/average -> eval, writes the
run record and predictions atomically under `{output_dir}/{experiment}/{run_id}/`, and returns the
record. A finished run (result.json with the same parameters) is returned as it is, not redone.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

from . import results
from .config import FinetuneConfig, ZeroShotConfig
from .data import (class_names, dataset_spec, fraction_indices, load_dataset, metadata_column, prompt_templates,
                   render_prompt, split_indices)
from .eval import evaluate_logits, image_batches, predict_logits
from .images import Normalize, image_split, reference_augmentation
from .models import ClipClassifier, encode_images, fit_linear_probe, load_clip, vision_only
from .swa import wise_ft
from .train import fit, resolve_device, resolve_precision
from .vocab import headline_metric


def run_id(cfg) -> str:
    """Folder name of a run: dataset, method, fraction, lr, seed (what varies across a grid)."""
    if isinstance(cfg, ZeroShotConfig):
        return f"{cfg.dataset}-zeroshot-{cfg.templates}-s{cfg.seed}"
    return f"{cfg.dataset}-{cfg.method}-f{cfg.fraction:g}-lr{cfg.lr:g}-s{cfg.seed}"


def run_dir(cfg) -> Path:
    return Path(cfg.output_dir) / cfg.experiment / run_id(cfg)


def select_metric(cfg: FinetuneConfig) -> str:
    """The metric checkpoints are chosen by: the dataset's ID headline on id_val, OOD headline on val."""
    return cfg.select_metric or headline_metric(cfg.dataset, cfg.select_split)


@dataclass
class Context:
    cfg: object
    dataset: object
    device: torch.device
    classnames: list
    templates: list

    def indices(self, split: str) -> np.ndarray:
        return split_indices(self.dataset, split)

    def images(self, indices, image_size: int, augment=None):
        return image_split(self.dataset, indices, image_size, cache=self.cfg.image_cache,
                           cache_dir=Path(self.cfg.cache_dir) / "decoded", augment=augment)


def _context(cfg) -> Context:
    dataset = load_dataset(cfg.dataset, cfg.root_dir, download=cfg.download)
    return Context(cfg, dataset, resolve_device(cfg.device), class_names(cfg.dataset),
                   prompt_templates(cfg.dataset, cfg.templates))


def _prompt_fns(templates):
    # open_clip-style callables, so `{article}` templates render the same everywhere
    return [lambda c, t=t: render_prompt(t, c) for t in templates]


def _load_clip(cfg):
    if cfg.pretrained is None:
        torch.manual_seed(cfg.seed)  # random init (tiny configs, tests) is seeded, hence reproducible
    return load_clip(cfg.model, cfg.pretrained, device="cpu")


def _image_size(bundle) -> int:
    size = bundle.image_size
    return int(size if isinstance(size, int) else size[0])


def _feature_key(cfg, bundle, name: str, indices) -> str:
    # Frozen features depend on the weights, the preprocessing and the images; a random init on the seed.
    blob = json.dumps([cfg.model, cfg.pretrained, cfg.seed if cfg.pretrained is None else None, name,
                       _image_size(bundle), list(bundle.mean), list(bundle.std), cfg.dataset,
                       str(Path(cfg.root_dir).resolve())])
    return hashlib.sha256(blob.encode() + np.asarray(indices, np.int64).tobytes()).hexdigest()[:20]


def cached_features(ctx: Context, encoder, bundle, indices, name: str) -> torch.Tensor:
    """Frozen image features of some images, computed once per (model, weights, images, preprocessing)."""
    cfg = ctx.cfg
    path = Path(cfg.cache_dir) / "features" / f"{cfg.dataset}-{name}-{_feature_key(cfg, bundle, name, indices)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    images = ctx.images(indices, _image_size(bundle))
    norm = Normalize(bundle.mean, bundle.std)
    batches = image_batches(images, cfg.eval_batch_size, cfg.num_workers, ctx.device)
    feats = encode_images(encoder, (norm(x) for x, _, _ in batches), device=ctx.device, normalize=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(feats, partial)
    partial.replace(path)
    return feats


def _finish(cfg, ctx: Context, method: str, variant_logits: dict, headline: str, selection: dict,
            timings: dict, extra: dict) -> dict:
    """Metrics per variant and split, predictions, the run record (atomically), returned."""
    out = run_dir(cfg)
    variants, frames = {}, {}
    for variant, per_split in variant_logits.items():
        variants[variant] = {}
        for split, logits in per_split.items():
            metrics, frame = evaluate_logits(ctx.dataset, ctx.indices(split), logits, split)
            variants[variant][split], frames[(variant, split)] = metrics, frame
    if cfg.save_predictions:
        for (variant, split), frame in frames.items():
            target = out if variant == headline else out / "variants" / variant
            results.write_predictions(target, split, frame)
    record = results.make_run_record(
        run_id=run_id(cfg), experiment=cfg.experiment, dataset=cfg.dataset, root_dir=str(cfg.root_dir),
        method=method, fraction=0.0 if method == "zeroshot" else cfg.fraction, seed=cfg.seed,
        lr=getattr(cfg, "lr", None), params=cfg.params(), metrics=variants[headline],
        selection={**selection, "variant": headline},
        variants=variants if len(variants) > 1 else None, timings=timings, **extra)
    record = {k: v for k, v in record.items() if v is not None or k == "git_commit"}
    results.write_run_record(out, record)
    return results.read_run_record(out / results.RESULT_FILE)


def _existing(cfg, force: bool):
    """The finished record of this run, if any. A record with *other* parameters in the same folder
    (run ids name only dataset, method, fraction, lr and seed) is never silently replaced."""
    out = run_dir(cfg)
    path = out / results.RESULT_FILE
    if force or not path.exists():
        return None
    if results.run_is_done(out, cfg.params()):
        return results.read_run_record(path)
    saved, wanted = results.read_run_record(path).get("params", {}), results.to_jsonable(cfg.params())
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    raise FileExistsError(
        f"{path} holds a finished run whose parameters differ in {differ}; it is not overwritten. "
        "Give this run another experiment (or output_dir), or pass force=True to replace it.")


def run_zero_shot(cfg: ZeroShotConfig, force: bool = False) -> dict:
    """Zero-shot CLIP (prompt head from the templates) on every configured split."""
    cfg = cfg.validate()
    if (done := _existing(cfg, force)) is not None:
        return done
    start = time.perf_counter()
    ctx = _context(cfg)
    bundle = _load_clip(cfg)
    clf = ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, ctx.classnames, _prompt_fns(ctx.templates),
                                   text_mode="frozen").to(ctx.device)
    logits = {}
    for split in cfg.eval_splits:
        feats = cached_features(ctx, bundle.model, bundle, ctx.indices(split), split)
        with torch.no_grad():
            logits[split] = clf.head(torch.nn.functional.normalize(feats.to(ctx.device), dim=-1)).float().cpu()
    timings = {"total_s": time.perf_counter() - start}
    return _finish(cfg, ctx, "zeroshot", {"zeroshot": logits}, "zeroshot",
                   {"split": None, "metric": None, "note": "no choice made"}, timings, {})


def _fit_probe(cfg, ctx, encoder, bundle, tag: str):
    """Linear probe on cached frozen features; its strength chosen on cfg.select_split only."""
    train_idx = fraction_indices(ctx.dataset, cfg.fraction, cfg.seed, cfg.stratify)
    val_idx = ctx.indices(cfg.select_split)
    y = torch.as_tensor(np.asarray(ctx.dataset.y_array))
    f_train = cached_features(ctx, encoder, bundle, train_idx, f"{tag}-train")
    f_val = cached_features(ctx, encoder, bundle, val_idx, f"{tag}-{cfg.select_split}")
    probe = fit_linear_probe(f_train, y[train_idx], f_val, y[val_idx], n_classes=len(ctx.classnames),
                             Cs=cfg.probe_cs, seed=cfg.seed)
    return probe, train_idx


def run_finetune(cfg: FinetuneConfig, force: bool = False, progress: bool = True) -> dict:
    """One training run: linear_probe, finetune, lp_ft, vision_only or vision_only_probe."""
    cfg = cfg.validate()
    if (done := _existing(cfg, force)) is not None:
        return done
    start = time.perf_counter()
    ctx = _context(cfg)
    if cfg.method in ("linear_probe", "vision_only_probe"):
        return _run_probe(cfg, ctx, start)
    return _run_end_to_end(cfg, ctx, start, progress)


def _vision_model(cfg, ctx):
    n = len(ctx.classnames)
    if cfg.vision_arch == "clip-visual":
        weights = cfg.vision_weights if cfg.vision_weights not in (None, "imagenet") else cfg.pretrained
        if weights is None:
            torch.manual_seed(cfg.seed)
        bundle = load_clip(cfg.model, weights, device="cpu")
        return vision_only(n, arch="clip-visual", clip=bundle)
    size = 224 if cfg.vision_arch == "vit_b_32" else _tiny_size(cfg)
    torch.manual_seed(cfg.seed)
    return vision_only(n, arch=cfg.vision_arch, weights=cfg.vision_weights, image_size=size)


def _tiny_size(cfg) -> int:
    try:
        size = open_clip.get_model_config(cfg.model)["vision_cfg"]["image_size"]
        return int(size if isinstance(size, int) else size[0])
    except (TypeError, KeyError):
        return 32


def _run_probe(cfg, ctx, start):
    if cfg.method == "linear_probe":
        bundle = _load_clip(cfg)
        encoder, tag = bundle.model, "clip"
    else:
        model = _vision_model(cfg, ctx)
        encoder, tag = model, f"vision-{cfg.vision_arch}-{cfg.vision_weights}"
        bundle = _Norm(model.mean, model.std, model.image_size)
    probe, train_idx = _fit_probe(cfg, ctx, encoder, bundle, tag)
    logits = {split: probe.logits(cached_features(ctx, encoder, bundle, ctx.indices(split), f"{tag}-{split}")).detach()
              for split in cfg.eval_splits}
    selection = {"split": cfg.select_split, "metric": "acc (probe)", "C": probe.C,
                 "val_scores": {str(k): v for k, v in probe.val_scores.items()}}
    return _finish(cfg, ctx, cfg.method, {"best": logits}, "best", selection,
                   {"total_s": time.perf_counter() - start}, {"n_train": int(len(train_idx))})


@dataclass
class _Norm:
    """The preprocessing facts `cached_features` needs, for models that are not ClipBundles."""
    mean: tuple
    std: tuple
    image_size: int


def _run_end_to_end(cfg, ctx, start, progress):
    if cfg.method == "vision_only":
        model = _vision_model(cfg, ctx)
        mean, std, size = model.mean, model.std, int(model.image_size)
    else:
        bundle = _load_clip(cfg)
        mean, std, size = bundle.mean, bundle.std, _image_size(bundle)
        if cfg.method == "lp_ft":
            probe, _ = _fit_probe(cfg, ctx, bundle.model, bundle, "clip")
            model = ClipClassifier.from_linear_probe(bundle.model, probe.W, probe.b)
        else:
            model = ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, ctx.classnames,
                                             _prompt_fns(ctx.templates), text_mode=cfg.text_mode)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device, norm = ctx.device, Normalize(mean, std)
    precision = resolve_precision(cfg.precision, device)
    train_idx = fraction_indices(ctx.dataset, cfg.fraction, cfg.seed, cfg.stratify)
    group_field = dataset_spec(cfg.dataset).group_field
    train_images = ctx.images(train_idx, size, augment=reference_augmentation() if cfg.augment else None)
    split_images = {s: ctx.images(ctx.indices(s), size) for s in set(cfg.eval_splits) | {cfg.select_split}}
    metric = select_metric(cfg)

    def logits_of(m, split):
        return predict_logits(m, split_images[split], norm, device, cfg.eval_batch_size, precision)

    def evaluate(m):
        # Selection reads only the validation split named in the config, never a test split.
        metrics, _ = evaluate_logits(ctx.dataset, ctx.indices(cfg.select_split), logits_of(m, cfg.select_split),
                                     cfg.select_split)
        return metrics[metric], {f"{cfg.select_split}/{k}": v for k, v in metrics.items()
                                 if not k.startswith("count_")}

    trained = fit(model, train_images, metadata_column(ctx.dataset, group_field)[train_idx], cfg,
                  normalize=norm, device=device, evaluate=evaluate,
                  checkpoint_dir=run_dir(cfg) / "checkpoint", progress=progress)
    states = {"best": trained.best_state, "last": trained.last_state}
    if trained.swa_state is not None:
        states["swa"] = trained.swa_state
    if trained.ema_state is not None:
        states["ema"] = trained.ema_state
    if cfg.wise_alphas:
        if cfg.method == "vision_only":
            warnings.warn("wise_alphas ignored for vision_only: it has no zero-shot end point", stacklevel=2)
        else:  # WiSE-FT: from the zero-shot (or LP) start to the final fine-tuned weights
            for alpha, state in wise_ft(initial_state, trained.last_state, list(cfg.wise_alphas)).items():
                states[f"wise_ft_{alpha:g}"] = state
    eval_started = time.perf_counter()
    variant_logits = {}
    for variant, state in states.items():
        model.load_state_dict(state)
        variant_logits[variant] = {s: logits_of(model, s) for s in cfg.eval_splits}
    timings = {"train_s": trained.train_seconds, "eval_s": time.perf_counter() - eval_started,
               "total_s": time.perf_counter() - start}
    selection = {"split": cfg.select_split, "metric": metric, "epoch": trained.best_epoch,
                 "score": trained.best_score}
    extra = {"history": trained.history, "n_train": int(len(train_idx)),
             "resumed_from_epoch": trained.resumed_from_epoch}
    record = _finish(cfg, ctx, cfg.method, variant_logits, "best", selection, timings, extra)
    # The resumable checkpoint has served its purpose once result.json exists.
    ckpt = run_dir(cfg) / "checkpoint"
    if ckpt.exists():
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    return record


def run(cfg, **kwargs) -> dict:
    """Dispatch on the config's type."""
    if isinstance(cfg, ZeroShotConfig):
        return run_zero_shot(cfg, **{k: v for k, v in kwargs.items() if k == "force"})
    if isinstance(cfg, FinetuneConfig):
        return run_finetune(cfg, **kwargs)
    raise TypeError(f"cfg must be a ZeroShotConfig or FinetuneConfig, not {type(cfg).__name__}")
