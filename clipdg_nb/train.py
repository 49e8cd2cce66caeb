"""One fine-tuning loop for every end-to-end method, its resumable checkpoint, and the disk both take.
Under torchrun every rank trains one DDP model on the same global batches (`devices.ShardedBatchSampler`);
rank 0 alone writes. The LR schedules are functions of the epoch, so resuming replays them."""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from . import devices
from .averaging import AVERAGES, swa_epochs
from .data import SAMPLERS
from .images.augment import BatchAugment
from .devices import autocast, resolve_precision
from .losses import cross_entropy
from .paths import atomic_path
from .notebook_kernel import EpochProgress, progress_mode

CHECKPOINT = "checkpoint.safetensors"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint, if one was written, is kept."""


def make_optimizer(cfg, params, no_decay=()) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable `params`, `cfg.weight_decay` on all but those in `no_decay`."""
    exempt = {id(p) for p in no_decay}
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in exempt]},
              {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]
    fused = uses_fused_adam(params)
    params = [g for g in groups if g["params"]]  # one group when nothing is exempt (earlier checkpoints)
    adam = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW  # adam: L2 decay (the study)
    return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=not fused, fused=fused)


def uses_fused_adam(params) -> bool:
    """Fused Adam on CUDA (one launch a step; last digits differ from foreach's). Elsewhere foreach:
    bit-identical to torch's per-tensor CPU loop at a quarter of the demo's time."""
    return bool(params) and all(p.device.type == "cuda" for p in params)


class EpochSchedule:
    """The LR schedule, stepped once per epoch: StepLR or warm-up + cosine, then SWALR on SWA epochs."""

    def __init__(self, cfg, optimizer: torch.optim.Optimizer):
        if cfg.scheduler == "step":
            self.main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        else:
            warm, total = cfg.warmup_epochs, cfg.epochs

            def factor(epoch: int) -> float:
                if epoch < warm:
                    return (epoch + 1) / (warm + 1)
                return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, total - warm)))
            self.main = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.swa_set = set(swa_epochs(cfg.epochs, cfg.swa_last_k)) if cfg.swa else set()
        # Anneal to swa_lr over at most 10 epochs (torch's default), within the SWA window.
        self.swa = torch.optim.swa_utils.SWALR(optimizer, swa_lr=cfg.swa_lr,
                                               anneal_epochs=max(1, min(10, cfg.swa_last_k))) if cfg.swa else None

    def end_epoch(self, epoch: int) -> None:
        (self.swa if epoch in self.swa_set else self.main).step()


@dataclass
class FitResult:
    """What the epochs so far chose and logged (the history, the best epoch on validation); once `fit`
    returns, with the last weights and the averaged ones by name (those enabled and updated: swa, ema)."""
    history: list = field(default_factory=list)
    best_state: dict | None = None
    best_score: float = -math.inf
    best_epoch: int = -1
    last_state: dict | None = None
    variants: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    resumed_from_epoch: int | None = None


def augmentation_generator(device: torch.device, seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The draws of one step's augmentation depend only on (seed, epoch, step, rank): replayed on resume."""
    return torch.Generator(device=device).manual_seed(((seed * 100_003 + epoch) * 100_019 + step) * 1_009 + rank)


def cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _whole_batch(batch):
    return batch  # ArrayImages.__getitems__ already returns the collated batch


def _loader(train_images: Dataset, sampler, cfg, device: torch.device, world: devices.DistInfo):
    """Batches of uint8 images: whole-batch memmap reads where the dataset offers them, pinned."""
    common = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=cfg.num_workers > 0)
    if hasattr(train_images, "__getitems__"):
        common["collate_fn"] = _whole_batch
    if world.enabled:  # each rank loads its shard (~batch_size // world) of the one-process global batch
        shards = devices.ShardedBatchSampler(sampler, cfg.batch_size, world.rank, world.world_size)
        return DataLoader(train_images, batch_sampler=shards, **common), shards
    return DataLoader(train_images, batch_size=cfg.batch_size, sampler=sampler, **common), None


def fit(model: torch.nn.Module, train_images: Dataset, train_groups, cfg, *, normalize: torch.nn.Module,
        device: torch.device, evaluate: Callable[[torch.nn.Module], tuple[float, dict]],
        checkpoint_dir: str | None = None, progress: bool | str = True, score_name: str = "score",
        desc: str = "training", loss_fn: Callable = cross_entropy,
        after_step: Callable[[torch.nn.Module], None] | None = None, no_decay=()) -> FitResult:
    """Train `model` on `train_images` (items: uint8 image, label, idx); returns its weight variants.
    `evaluate(model) -> (score, metrics)` on the selection split after each epoch; the highest score
    is `best_state` (ties keep the earlier). With `checkpoint_dir` an interrupted call resumes and ends
    with the same weights; a checkpoint is written every `cfg.checkpoint_every` epochs at least
    `cfg.checkpoint_minutes` apart, and after the last. `loss_fn`, `after_step` and `no_decay`
    (parameters without weight decay) come from the method's spec."""
    world = devices.info()
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = make_optimizer(cfg, model.parameters(), no_decay)
    schedule = EpochSchedule(cfg, optimizer)
    averages = {name: avg.make(cfg, device) for name, avg in AVERAGES.items() if avg.enabled(cfg)}
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")
    sampler = SAMPLERS[cfg.sampler](train_groups, cfg.seed)
    augment = BatchAugment() if cfg.augment else None  # on the device, after the transfer
    loader, shards = _loader(train_images, sampler, cfg, device, world)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    fingerprint = json.dumps(cfg.identity(), sort_keys=True)
    chosen = FitResult()
    resumed = (resume(ckpt, fingerprint, model, optimizer, schedule, averages, chosen, device)  # every rank reads it
               if ckpt is not None and ckpt.exists() else None)
    start_epoch = resumed or 0
    step_model = step_module(model, cfg, device, world)

    def train_step(x, y, epoch: int, step: int) -> torch.Tensor:
        # returns the loss shown (the global-batch mean under DDP) on the device: nothing here waits
        # for it (a non-finite loss is caught at the epoch's end)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, augmentation_generator(device, cfg.seed, epoch, step, world.rank))
        x = normalize(x)
        with autocast(device, precision):
            loss = loss_fn(step_model, x, y)
        shown = loss
        if world.enabled:  # DDP averages gradients over ranks; this weight makes it the global-batch mean
            loss = loss * shards.weight(step)
            shown = world.mean(loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step(model)
        update_averages(averages, "step", cfg, epoch, model)
        return shown.detach()

    started = saved = time.perf_counter()  # `saved`: when the last checkpoint was written (or training began)
    shown_progress = EpochProgress(progress_mode(progress) if world.is_main else "off", cfg.epochs, start_epoch, desc)
    for epoch in range(start_epoch, cfg.epochs):
        epoch_started = time.perf_counter()
        sampler.set_epoch(epoch)
        if world.enabled:  # distinct draws of any other randomness per rank, replayable on resume
            torch.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + world.rank)
        model.train()
        losses = []
        bar = shown_progress.steps(loader, epoch)
        for step, (x, y, _) in enumerate(bar):
            losses.append(train_step(x, y, epoch, step))
            if bar is not loader and step:  # the step before's loss: read while this one runs on the device
                bar.set_postfix(loss=f"{losses[-2].item():.3f}", refresh=False)
        # The end of an epoch: its losses read at once, average, step the schedule, choose on
        # validation, show, checkpoint. A non-finite loss stops the run before its checkpoint.
        losses, lr = torch.stack(losses).tolist() if losses else [], optimizer.param_groups[0]["lr"]
        if not all(map(math.isfinite, losses)):
            kept = (f"the last good checkpoint is kept at {ckpt}" if ckpt is not None and ckpt.is_file()
                    else "no checkpoint was written before it")
            raise NonFiniteLossError(
                f"loss became {next(v for v in losses if not math.isfinite(v))} at epoch {epoch + 1} (lr={lr:.3g}); "
                f"{kept}. Lower lr, set grad_clip, or use precision='fp32'.")
        update_averages(averages, "epoch", cfg, epoch, model)
        schedule.end_epoch(epoch)
        score, metrics = evaluate(model)  # on the selection split; the best epoch's weights are kept
        chosen.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                               "lr": lr, "select_score": score, **metrics})
        if score > chosen.best_score:
            chosen.best_score, chosen.best_epoch, chosen.best_state = score, epoch + 1, cpu_state(model)
        shown_progress.end_epoch(epoch, chosen.history[-1]["train_loss"], score_name, score, chosen.best_score,
                                 chosen.best_epoch, time.perf_counter() - epoch_started)
        due = (epoch + 1) % cfg.checkpoint_every == 0 and time.perf_counter() - saved >= 60 * cfg.checkpoint_minutes
        if ckpt is not None and world.is_main and (due or epoch + 1 == cfg.epochs):
            save_checkpoint(ckpt, model, optimizer, averages, chosen.best_state,
                            {"epoch": epoch, "params": fingerprint, "history": chosen.history,
                             "best_score": chosen.best_score, "best_epoch": chosen.best_epoch})
            saved = time.perf_counter()
        world.barrier()  # no rank starts the next epoch before rank 0's checkpoint is written
    shown_progress.close()

    return dataclasses.replace(
        chosen, best_state=chosen.best_state if chosen.best_state is not None else cpu_state(model),
        last_state=cpu_state(model), variants={name: acc.state_dict() for name, acc in averages.items() if acc.n_averaged},
        train_seconds=time.perf_counter() - started, resumed_from_epoch=resumed)


def resume(ckpt: Path, fingerprint: str, model, optimizer, schedule: EpochSchedule, averages: dict,
           chosen: FitResult, device: torch.device) -> int | None:
    """Restore weights, optimizer, schedule, averages, selection and RNG from a checkpoint of the same
    run (identity); returns the epoch to start from, None when it is another run's or its optimizer
    state has other shapes (written before only the used token rows trained)."""
    tensors, meta = load_checkpoint(ckpt)
    shapes = dict(enumerate(p.shape for group in optimizer.param_groups for p in group["params"]))
    if meta.get("params") != fingerprint or any(k.endswith(".exp_avg") and v.shape != shapes.get(int(k.split(".")[0]))
                                                for k, v in checkpoint_part(tensors, "optim").items()):
        return None
    model.load_state_dict({k: v.to(device) for k, v in checkpoint_part(tensors, "model").items()})
    with warnings.catch_warnings():  # replaying the schedule without optimizer steps is the point
        warnings.simplefilter("ignore", UserWarning)
        for epoch in range(meta["epoch"] + 1):
            schedule.end_epoch(epoch)
    restore_optimizer(optimizer, tensors, meta["optim_groups"])
    for name, acc in averages.items():
        if f"{name}_meta" in meta:
            acc.load_state(checkpoint_part(tensors, name), meta[f"{name}_meta"])
    chosen.best_state = checkpoint_part(tensors, "best") or None
    chosen.history, chosen.best_score, chosen.best_epoch = meta["history"], meta["best_score"], meta["best_epoch"]
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta["epoch"] + 1


def step_module(model: torch.nn.Module, cfg, device: torch.device, world: devices.DistInfo) -> torch.nn.Module:
    """The module the steps call, DDP-wrapped and/or compiled; `model` is evaluated, averaged and saved."""
    step_model = model
    if world.enabled:
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
                                             if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)
    return step_model


def update_averages(averages: dict, every: str, cfg, epoch: int, model: torch.nn.Module) -> None:
    """Fold the current weights into each average updated `every` 'step' or 'epoch' from its first epoch on."""
    for name, acc in averages.items():
        if AVERAGES[name].every == every and epoch >= AVERAGES[name].first_epoch(cfg):
            acc.update(model.state_dict())


# ---------------------------------------------------------------------------------------------
# The resumable checkpoint: one safetensors file per run (weights, optimizer state, averages, best
# weights so far, RNG state), the JSON-able rest (epoch, history, parameters) in its header; atomic.
# ---------------------------------------------------------------------------------------------

META_KEY = "clipdg_nb.train"


def save_checkpoint(path: Path, model, optimizer, averages: dict, best_state: dict | None, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu()
    meta = dict(meta, optim_groups=opt_state["param_groups"])
    for prefix, acc in averages.items():
        if acc.n_averaged > 0:
            acc_tensors, meta[f"{prefix}_meta"] = acc.state()
            tensors.update({f"{prefix}.{k}": v for k, v in acc_tensors.items()})
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    # Contiguous clones: tensors sharing storage (tied weights) must serialise independently.
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()[META_KEY])


def checkpoint_part(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def restore_optimizer(optimizer, tensors: dict, groups: list) -> None:
    state: dict = {}
    for key, value in checkpoint_part(tensors, "optim").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for group, current in zip(groups, optimizer.param_groups):  # JSON turned tuples into lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        # the kernel follows the device it resumes on (`uses_fused_adam`), not the one it ran on
        group.update({k: current[k] for k in ("foreach", "fused") if k in current})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------------------
# Disk sizes, estimated from the model built on the meta device (nothing allocated, no weights read
# or downloaded), so that `pipeline.validate` prints what a grid will take before anything runs.
# ---------------------------------------------------------------------------------------------

def meta_model(cfg) -> torch.nn.Module:
    """The model `methods.end_to_end` trains for `cfg`, shapes only, with what trains as its spec says:
    the whole CLIP when the text tower trains, else the image tower and a linear head."""
    import logging

    import open_clip

    from .config import method_spec
    from .data import dataset_spec
    from .inputs import vision_image_size
    from .models.clip import register_tiny_configs
    from .models.partial import TRAINABLE

    spec, n = method_spec(cfg.method), dataset_spec(cfg.dataset).n_classes
    if spec.init == "vision_tower" and cfg.vision_arch != "clip-visual":
        from .models.vision import vision_only
        with torch.device("meta"):
            return TRAINABLE[spec.trainable](vision_only(n, arch=cfg.vision_arch, image_size=vision_image_size(cfg)), cfg)
    register_tiny_configs()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted here
    try:
        clip = open_clip.create_model(cfg.model, pretrained=None, device="meta")
    finally:
        logging.disable(previous)
    # as methods.initial_model builds it (frozen text: the zero-shot head; LP-FT: the probe; vision-only: new)
    text_mode = "head" if spec.init in ("probe_first", "vision_tower") else (spec.text_mode or cfg.text_mode)
    model = torch.nn.Module()
    model.text_mode = text_mode  # what `models.partial.image_tower` reads
    if text_mode == "trainable":
        model.clip = clip
        clip.token_embedding.requires_grad_(False)
    else:
        model.visual, model.head = clip.visual, torch.nn.Linear(clip.visual.output_dim, n, device="meta")
    return TRAINABLE[spec.trainable](model, cfg)


def kept_weights_estimate(cfg) -> int:
    """The bytes of the tensors a run of `cfg` keeps with keep_weights=True (`runs.Run.keep_weights`:
    float entries in float16); the file's header comes on top."""
    return sum(v.numel() * (2 if torch.is_floating_point(v) else v.element_size())
               for v in meta_model(cfg).state_dict().values())


def checkpoint_estimate(cfg) -> int:
    """The bytes of a run's largest checkpoint (`save_checkpoint` after the last epoch): the weights and
    the best epoch's, Adam's two moments of each trainable parameter and each average `cfg` enables (at
    least float32). The header, step counts, RNG state and trained token rows' moments come on top."""
    model = meta_model(cfg)
    state = model.state_dict()
    weights = sum(v.numel() * v.element_size() for v in state.values())
    averaged = sum(v.numel() * (max(v.element_size(), 4) if torch.is_floating_point(v) else v.element_size())
                   for v in state.values())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 2 * weights + moments + sum(avg.enabled(cfg) for avg in AVERAGES.values()) * averaged
