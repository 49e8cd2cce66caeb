"""One fine-tuning loop for every end-to-end method (CLIP fine-tune, LP-FT, vision-only).

Cross-entropy; Adam with L2 weight decay and StepLR (the reference study) or AdamW with cosine
and warm-up; SWA (SWALR over the last K epochs), EMA; mixed precision; gradient clipping;
evaluation each epoch on a *validation* split, keeping the best epoch. A checkpoint at each epoch
end holds everything needed to resume (weights, optimizer, averages, best weights, RNG, history)
in one safetensors file, so a run killed mid-way ends with the same weights as an uninterrupted
one. The LR schedulers are pure functions of the epoch, so they are rebuilt by replaying steps
rather than pickled.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import FinetuneConfig
from .data import make_sampler
from .distributed import ShardedBatchSampler, info as dist_info, training_starts
from .eval import autocast_for
from .swa import EMA, RunningAverage, swa_epochs, swalr_schedule

CHECKPOINT = "checkpoint.safetensors"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device='cpu' or 'auto'")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 on CUDA where supported, fp32 elsewhere (CPU bf16 is slower on most CPUs)."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def make_optimizer(cfg: FinetuneConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":  # the study: Adam with L2 weight decay added to the gradient
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class EpochSchedule:
    """The LR schedule, stepped once per epoch: StepLR or warm-up + cosine, then SWALR on SWA epochs."""

    def __init__(self, cfg: FinetuneConfig, optimizer: torch.optim.Optimizer):
        if cfg.scheduler == "step":
            self.main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        else:
            warm, total = cfg.warmup_epochs, cfg.epochs

            def factor(epoch: int) -> float:
                if epoch < warm:
                    return (epoch + 1) / (warm + 1)
                return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, total - warm)))
            self.main = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.swa_set = set(swa_epochs(cfg.epochs, swa_last_k=cfg.swa_last_k)) if cfg.swa else set()
        # Anneal to swa_lr over at most 10 epochs (torch's default), within the SWA window.
        self.swa = swalr_schedule(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=max(1, min(10, cfg.swa_last_k))) \
            if cfg.swa else None

    def end_epoch(self, epoch: int) -> None:
        (self.swa if epoch in self.swa_set else self.main).step()


@dataclass
class FitResult:
    best_state: dict
    last_state: dict
    swa_state: dict | None
    ema_state: dict | None
    best_epoch: int
    best_score: float
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from_epoch: int | None = None


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, model, optimizer, swa: RunningAverage | None, ema: EMA | None,
                     best_state: dict | None, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = dict(meta, optim_groups=opt_state["param_groups"])
    for prefix, acc in (("swa", swa), ("ema", ema)):
        if acc is not None and acc.n_averaged > 0:
            acc_tensors, acc_meta = acc.state()
            tensors.update({f"{prefix}.{k}": v for k, v in acc_tensors.items()})
            meta[f"{prefix}_meta"] = acc_meta
    if best_state is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in best_state.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    # Clone so tensors sharing storage (tied weights) serialise independently.
    tensors = {k: v.clone() for k, v in tensors.items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"clipdg_nb.train": json.dumps(meta)})
    os.replace(partial, path)  # never a half-written checkpoint


def _load_checkpoint(path: Path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["clipdg_nb.train"])
    return load_file(str(path)), meta


def _take(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _restore_optimizer(optimizer, tensors: dict, groups: list) -> None:
    state: dict = {}
    for key, value in _take(tensors, "optim").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for group in groups:  # JSON turned tuples into lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def fit(model: torch.nn.Module, train_images: Dataset, train_groups, cfg: FinetuneConfig, *,
        normalize: torch.nn.Module, device: torch.device,
        evaluate: Callable[[torch.nn.Module], tuple[float, dict]],
        checkpoint_dir: str | os.PathLike | None = None, progress: bool = True) -> FitResult:
    """Train `model` on `train_images` (items: uint8 image, label, idx) and return its weight variants.

    `evaluate(model) -> (score, metrics)` is called after each epoch on the selection split; the
    epoch with the highest score is kept as `best_state`. With `checkpoint_dir`, an interrupted
    call resumes from the last finished epoch.

    Under torchrun (see `clipdg_nb.distributed`) the same call on every rank trains one model with
    DDP on the same global batches; rank 0 alone writes the checkpoint.
    """
    ddp = dist_info()  # a world of one unless a process group is up
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = make_optimizer(cfg, model.parameters())
    schedule = EpochSchedule(cfg, optimizer)
    swa = RunningAverage() if cfg.swa else None
    ema = EMA(cfg.ema_decay, device=device) if cfg.ema_decay else None  # updated every step: on the device
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")
    sampler = make_sampler(cfg.sampler, train_groups, cfg.seed)
    if ddp.enabled:  # DDP: each rank loads its shard (~batch_size // world) of the one-process global batch
        shards = ShardedBatchSampler(sampler, cfg.batch_size, ddp.rank, ddp.world_size)
        loader = DataLoader(train_images, batch_sampler=shards, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    else:
        loader = DataLoader(train_images, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0, drop_last=False)
    history, best_state, best_score, best_epoch, start_epoch, resumed = [], None, -math.inf, -1, 0, None
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    fingerprint = json.dumps(cfg.params(), sort_keys=True)
    if ddp.enabled:  # DDP: start together; every rank resumes (or not) from rank 0's checkpoint
        training_starts()
        ckpt, fingerprint = ddp.broadcast((ckpt, fingerprint))
    if ckpt is not None and ckpt.exists():
        tensors, meta = _load_checkpoint(ckpt)
        if meta.get("params") == fingerprint:
            model.load_state_dict({k: v.to(device) for k, v in _take(tensors, "model").items()})
            with warnings.catch_warnings():  # replaying steps without optimizer steps is the point here
                warnings.simplefilter("ignore", UserWarning)
                for epoch in range(meta["epoch"] + 1):  # replay the pure-function schedule
                    schedule.end_epoch(epoch)
            _restore_optimizer(optimizer, tensors, meta["optim_groups"])
            if swa is not None and "swa_meta" in meta:
                swa.load_state(_take(tensors, "swa"), meta["swa_meta"])
            if ema is not None and "ema_meta" in meta:
                ema.load_state(_take(tensors, "ema"), meta["ema_meta"])
            best_state = _take(tensors, "best") or None
            history, best_score, best_epoch = meta["history"], meta["best_score"], meta["best_epoch"]
            torch.set_rng_state(tensors["rng.torch"])
            if torch.cuda.is_available():
                cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
                if len(cuda_states) == torch.cuda.device_count():
                    torch.cuda.set_rng_state_all(cuda_states)
            start_epoch = resumed = meta["epoch"] + 1
    # The module the training steps call: DDP-wrapped (world > 1) and/or compiled; `model` itself
    # (same parameters) is what is evaluated, averaged and saved.
    step_model = model
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(
            model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        if ddp.enabled:  # DDP: distinct augmentation draws per rank, replayable on resume
            torch.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + ddp.rank)
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress or not ddp.is_main)
        for step, (x, y, _) in enumerate(bar):
            x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            with autocast_for(device, precision):
                loss = F.cross_entropy(step_model(x).float(), y)
            shown = loss
            if ddp.enabled:  # DDP averages gradients over ranks; this weight makes it the global-batch mean
                loss = loss * shards.weight(step)
                shown = ddp.mean(loss)  # the global-batch mean loss, the same on every rank
            if not torch.isfinite(shown):
                raise NonFiniteLossError(
                    f"loss became {shown.item()} at epoch {epoch + 1} (lr={optimizer.param_groups[0]['lr']:.3g}); "
                    f"the last good checkpoint is kept{f' at {ckpt}' if ckpt else ''}. Lower lr, set grad_clip, "
                    "or use precision='fp32'.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model.state_dict())
            losses.append(shown.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        lr = optimizer.param_groups[0]["lr"]
        if swa is not None and epoch in schedule.swa_set:
            swa.update(model.state_dict())
        schedule.end_epoch(epoch)
        score, metrics = evaluate(model)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "lr": lr, "select_score": score, **metrics})
        if score > best_score:  # ties keep the earlier epoch
            best_score, best_epoch, best_state = score, epoch + 1, _cpu_state(model)
        if ckpt is not None and ddp.is_main and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            _save_checkpoint(ckpt, model, optimizer, swa, ema, best_state,
                             {"epoch": epoch, "params": fingerprint, "history": history,
                              "best_score": best_score, "best_epoch": best_epoch})
        ddp.barrier()  # DDP: no rank starts the next epoch before rank 0's checkpoint is written
    return FitResult(
        best_state=best_state if best_state is not None else _cpu_state(model), last_state=_cpu_state(model),
        swa_state=swa.state_dict() if swa is not None and swa.n_averaged else None,
        ema_state=ema.state_dict() if ema is not None and ema.n_averaged else None,
        best_epoch=best_epoch, best_score=best_score, history=history,
        train_seconds=time.perf_counter() - started, resumed_from_epoch=resumed)
