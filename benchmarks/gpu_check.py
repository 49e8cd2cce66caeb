"""One command for a GPU: the study's speed on this device, in one table, checked against its targets.

    make gpu-check                                   # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --out DIR         # also writes DIR/gpu_check.md and DIR/gpu_check.json
    python benchmarks/gpu_check.py --smoke           # tiny sizes, seconds (what a CPU gets anyway)

On a CUDA device (about 4-6 minutes on one H200, under 8):
  peak       the device's dense bf16 peak from a table of known parts, and a large bf16 matmul measured;
  training   ViT-B/32 (open_clip, random init: the speed does not depend on the weights) as the study
             trains it: `ClipClassifier`, both towers trainable, 62 class prompts through the text tower
             each step, normalisation on the device, bf16 autocast, cross-entropy, Adam; batch 128.
             Eager and `torch.compile`, each with and without channels_last. FLOPs of a step are counted
             (FlopCounterMode, one eager forward + backward); their rate over the peak is the MFU;
  eval       the image tower under inference mode, the class text embedded once;
  augment    `BatchAugment` (flip / ColorJitter / rotation, per-sample parameters) on uint8 batches
             on the device;
  cache      reading whole batches of random rows from a decoded uint8 memmap (the layout of
             `images/cache.py`), from disk (the file's pages dropped first) and from the page cache,
             and the pinned host-to-device copy after it;
  real point `benchmarks/bench_real_scale.py` at real sizes and formats (`clipdg synth --profile real`
             data through the WILDS loader, the decode cache, load + augment, train, eval); needs
             wilds, else its row says "skipped";
  DDP        the training step with DistributedDataParallel (NCCL) over all visible GPUs; skipped
             with one GPU;
  grid       GPU-hours of the FMoW and iWildCam paper grids (bench_real_scale.grid_images) projected
             from the measured training and evaluation rates.
Targets: training >= 40 % of the bf16 peak, augmentation >= 20,000 images/s, the FMoW grid <= 2
GPU-hours on one H200. Each part that fails prints a FAILED row and the table still comes out (exit 1);
a part whose package is missing prints "skipped: <why>" (exit 0). Needs only torch, open_clip, numpy,
pillow, pandas, pyarrow and clipdg_nb (wilds for the real-size point). On a CPU it runs in smoke
mode: the tiny CLIP at 32 px and a handful of steps, so the test suite can run it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import cpu_name  # noqa: E402

# Dense bf16 tensor-core peak in TFLOP/s (no sparsity), SXM parts, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "RTX 4090": 165.2,
                    "RTX 3090": 71.0}
TARGET_MFU, TARGET_AUGMENT_IPS, TARGET_FMOW_HOURS = 0.40, 20_000.0, 2.0
FMOW_PROMPTS, IWILDCAM_PROMPTS = 62, 182
# Assumed sustained write rate of checkpoints in the grid projection (a local NVMe SSD; a network
# file system is often several times slower): stated in its row.
CHECKPOINT_WRITE_GB_S = 2.0


@dataclass
class Sizes:
    model: str
    batch: int
    eval_batch: int
    steps: int
    warmup: int
    matmul: int
    augment_batch: int
    augment_steps: int
    cache_images: int
    cache_batch: int
    real_argv: list
    compile_backend: str  # smoke: "eager" (dynamo traces, no inductor code generation: seconds, not minutes)


GPU = Sizes("ViT-B-32", 128, 1024, 30, 5, 8192, 256, 40, 16384, 128,
            ["--count", "512", "--eval-count", "128", "--train-images", "512", "--eval-images", "128",
             "--batch-size", "128", "--decode-images", "64"], "inductor")
# The smoke real point writes its data where bench_real_scale.py --smoke does (outputs/bench/smoke/real
# under the working folder), so in one test session the two write it once.
SMOKE = Sizes("clipdg-tiny-vit", 8, 16, 2, 1, 256, 16, 2, 64, 16, ["--smoke"], "eager")


class Table:
    """The one table: a row per measurement, with its target and whether it is met."""

    def __init__(self):
        self.rows: list[dict] = []
        self.failed = False

    def add(self, what: str, value: str, notes: str = "", target: str = "", met: str = ""):
        self.rows.append({"measurement": what, "value": value, "notes": notes, "target": target, "met": met})
        print(f"  {what}: {value}  {notes}", flush=True)

    def part(self, what: str, fn, *args):
        """Run one part; a missing package makes a "skipped" row, any other error a FAILED row."""
        started = time.perf_counter()
        print(f"\n== {what}", flush=True)
        try:
            out = fn(self, *args)
            print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
            return out
        except ModuleNotFoundError as e:
            self.add(what, f"skipped: {e.name} is not installed", "benchmarks/gpu_wheels.sh fetches it")
        except Exception as e:  # the table must still come out
            traceback.print_exc()
            self.failed = True
            self.add(what, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        return None

    def markdown(self) -> str:
        lines = ["| measurement | value | notes | target | met? |", "|---|---|---|---|---|"]
        lines += [f"| {r['measurement']} | {r['value']} | {r['notes']} | {r['target']} | {r['met']} |"
                  for r in self.rows]
        return "\n".join(lines)


def judged(ok: bool, smoke: bool) -> str:
    return "n/a (smoke)" if smoke else ("met" if ok else "NOT MET")


@contextlib.contextmanager
def quiet_random_init():
    """open_clip warns "No pretrained weights loaded" for pretrained=None: random init is the point here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class Ctx:
    def __init__(self, device: torch.device, sizes: Sizes, smoke: bool, workdir: Path):
        self.device, self.sizes, self.smoke, self.workdir = device, sizes, smoke, workdir
        self.cuda = device.type == "cuda"
        self.precision = "bf16" if self.cuda else "fp32"
        self.peak_tflops: float | None = None  # the table's, else the measured matmul's
        self.rates: dict[str, float] = {}
        self.ddp_cpu = 0  # gloo processes for the DDP row without a GPU

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn, steps: int, warmup: int) -> float:
        """Seconds a call, over `steps` calls after `warmup` untimed ones."""
        for _ in range(warmup):
            fn()
        self.sync()
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        self.sync()
        return (time.perf_counter() - started) / steps


def device_name(ctx: Ctx) -> str:
    if ctx.cuda:
        return f"{torch.cuda.get_device_name(ctx.device)} x {torch.cuda.device_count()}"
    return f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------------
# peak
# ------------------------------------------------------------------------------------------------

def part_peak(table: Table, ctx: Ctx):
    n = ctx.sizes.matmul
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    seconds = ctx.timed(lambda: a @ b, 10 if ctx.cuda else 3, 3 if ctx.cuda else 1)
    measured = 2 * n ** 3 / seconds / 1e12
    table.add("matmul peak, measured", f"{measured:,.1f} TFLOP/s" if measured >= 1 else f"{measured * 1e3:,.1f} GFLOP/s",
              f"{n}x{n}x{n} {str(dtype).replace('torch.', '')} on random data, mean of the timed products")
    known = None
    if ctx.cuda:
        name = torch.cuda.get_device_name(ctx.device)
        known = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        table.add("bf16 peak, datasheet", f"{known:,.0f} TFLOP/s" if known else "unknown",
                  f"{name}: dense bf16 (table in gpu_check.py)" if known else f"{name} is not in the table")
    ctx.peak_tflops = known or measured
    ctx.rates["peak_measured_tflops"] = measured
    ctx.rates["peak_table_tflops"] = known or float("nan")


# ------------------------------------------------------------------------------------------------
# training and evaluation
# ------------------------------------------------------------------------------------------------

def classifier(ctx: Ctx, n_prompts: int):
    """The study's classifier on `model` with random weights and `n_prompts` class prompts. The names
    come from the shipped iWildCam label file (no wilds needed); only their count and length matter."""
    import open_clip
    from clipdg_nb.data import class_names, prompt_templates, render_prompt
    from clipdg_nb.images import Normalize
    from clipdg_nb.models import ClipClassifier, register_tiny_configs
    register_tiny_configs()
    torch.manual_seed(0)
    with quiet_random_init():
        clip = open_clip.create_model(ctx.sizes.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(ctx.sizes.model)
    names = class_names("iwildcam")[:n_prompts]
    template = prompt_templates("fmow", "paper")[0]
    model = ClipClassifier.zero_shot(clip, tokenizer, names, [lambda c: render_prompt(template, c)]).to(ctx.device)
    pp = clip.visual.preprocess_cfg
    size = clip.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return model, Normalize(pp["mean"], pp["std"]).to(ctx.device), size


def make_train_step(ctx: Ctx, model, step_model, norm, x, y, channels_last: bool):
    from clipdg_nb.devices import autocast
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-4)  # train.fit's "adam"

    def step():
        inputs = norm(x)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, ctx.precision):
            loss = F.cross_entropy(step_model(inputs).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step.optimizer = optimizer
    return step


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mfu_text(ctx: Ctx, flops_per_s: float) -> str:
    return f"{100 * flops_per_s / 1e12 / ctx.peak_tflops:.1f} % of the peak" if ctx.peak_tflops else "peak unknown"


def part_training(table: Table, ctx: Ctx):
    s = ctx.sizes
    model, norm, size = classifier(ctx, FMOW_PROMPTS)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (s.batch, 3, size, size), dtype=torch.uint8, generator=g).to(ctx.device)
    y = torch.randint(0, FMOW_PROMPTS, (s.batch,), generator=g).to(ctx.device)
    flops = count_flops(make_train_step(ctx, model, model, norm, x, y, False))  # fwd + bwd + Adam, eager
    per_image = flops / s.batch
    ctx.rates["train_gflop_per_image"] = per_image / 1e9
    best = ("", 0.0)
    compiled = None
    variants = (("eager", False, False), ("eager, channels_last", False, True),
                ("torch.compile", True, False), ("torch.compile, channels_last", True, True))
    for name, use_compile, channels_last in variants:
        try:  # one variant that breaks (a compiler error, say) costs its row only
            model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            if use_compile and compiled is None:
                compiled = torch.compile(model, backend=s.compile_backend)
            step = make_train_step(ctx, model, compiled if use_compile else model, norm, x, y, channels_last)
            started = time.perf_counter()
            step()  # the first step compiles
            ctx.sync()
            first = time.perf_counter() - started
            seconds = ctx.timed(step, s.steps, s.warmup)
        except Exception as e:
            if name == "eager":
                raise
            traceback.print_exc()
            table.failed = True
            table.add(f"training images/s, {name}", f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        ips = s.batch / seconds
        ctx.rates[f"train_ips[{name}]"] = ips
        if ips > best[1]:
            best = (name, ips)
        mfu = flops / seconds / 1e12 / ctx.peak_tflops if ctx.peak_tflops else float("nan")
        table.add(f"training images/s, {name}", f"{ips:,.0f}",
                  f"batch {s.batch}, {mfu_text(ctx, flops / seconds)}, {per_image / 1e9:.1f} GFLOP an image"
                  + (f", compile + first step {first:.0f} s" if use_compile else "")
                  + (f" (backend {s.compile_backend!r})" if use_compile and s.compile_backend != "inductor" else ""),
                  f">= {100 * TARGET_MFU:.0f} % of peak", judged(mfu >= TARGET_MFU, ctx.smoke))
    model.to(memory_format=torch.contiguous_format)
    ctx.rates["train_ips_best"] = best[1]
    ctx.rates["train_best_variant"] = best[0]
    best_mfu = best[1] * per_image / 1e12 / ctx.peak_tflops if ctx.peak_tflops else float("nan")
    ctx.rates["train_mfu_best"] = best_mfu
    print(f"TARGET train_mfu: {100 * best_mfu:.1f} % (target >= {100 * TARGET_MFU:.0f} %): "
          f"{judged(best_mfu >= TARGET_MFU, ctx.smoke)}")

    # the same step with iWildCam's 182 prompts (eager), for its grid's projection
    del compiled
    model182, norm182, _ = classifier(ctx, IWILDCAM_PROMPTS)
    model182.train()
    y182 = torch.randint(0, IWILDCAM_PROMPTS, (s.batch,), generator=g).to(ctx.device)
    step182 = make_train_step(ctx, model182, model182, norm182, x, y182, False)
    flops182 = count_flops(step182)
    ips182 = s.batch / ctx.timed(step182, s.steps, s.warmup)
    eager = ctx.rates["train_ips[eager]"]
    ctx.rates["train_ips_iwildcam"] = ips182 * best[1] / eager  # the best variant's speed-up over eager
    table.add("training images/s, eager, 182 prompts (iWildCam)", f"{ips182:,.0f}",
              f"{flops182 / s.batch / 1e9:.1f} GFLOP an image; x {best[1] / eager:.2f} for {best[0]} "
              f"-> {ctx.rates['train_ips_iwildcam']:,.0f} in the projection")
    del model182

    # evaluation: the image tower, the text embedded once
    from clipdg_nb.devices import autocast
    xe = torch.randint(0, 256, (s.eval_batch, 3, size, size), dtype=torch.uint8, generator=g).to(ctx.device)
    model.eval()

    @torch.inference_mode()
    def eval_step():
        with autocast(ctx.device, ctx.precision):
            return model(norm(xe))
    with model.cached_text_features():
        seconds = ctx.timed(eval_step, s.steps, s.warmup)
    ctx.rates["eval_ips"] = s.eval_batch / seconds
    table.add("evaluation images/s, eager", f"{ctx.rates['eval_ips']:,.0f}", f"batch {s.eval_batch}, inference mode")
    if ctx.cuda:
        table.add("max GPU memory allocated", f"{torch.cuda.max_memory_allocated(ctx.device) / 2**30:.1f} GiB")


# ------------------------------------------------------------------------------------------------
# augmentation, cache reads
# ------------------------------------------------------------------------------------------------

def part_augment(table: Table, ctx: Ctx):
    from clipdg_nb.images.augment import BatchAugment
    s = ctx.sizes
    size = 224
    x = torch.randint(0, 256, (s.augment_batch, 3, size, size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0)).to(ctx.device)
    augment, gen = BatchAugment(), torch.Generator(device=ctx.device)
    out = torch.empty_like(x)
    step = [0]

    def run():
        step[0] += 1
        gen.manual_seed(step[0])  # one seed per (seed, epoch, step), as training does
        augment(x, gen, out=out)
    ips = s.augment_batch / ctx.timed(run, s.augment_steps, 2)
    ctx.rates["augment_ips"] = ips
    table.add("augmentation images/s (BatchAugment on the device)", f"{ips:,.0f}",
              f"uint8 {size} px, batch {s.augment_batch}, flip + ColorJitter(0.1) + rotation(2)",
              f">= {TARGET_AUGMENT_IPS:,.0f}", judged(ips >= TARGET_AUGMENT_IPS, ctx.smoke))
    print(f"TARGET augment: {ips:,.0f} images/s (target >= {TARGET_AUGMENT_IPS:,.0f}): "
          f"{judged(ips >= TARGET_AUGMENT_IPS, ctx.smoke)}")


def part_cache(table: Table, ctx: Ctx):
    s = ctx.sizes
    size = 224
    path = ctx.workdir / "decoded.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(s.cache_images, size, size, 3))
    block = np.random.default_rng(0).integers(0, 256, (min(256, s.cache_images), size, size, 3), dtype=np.uint8)
    for i in range(0, s.cache_images, len(block)):
        rows[i:i + len(block)] = block[: s.cache_images - i]
    rows.flush()
    del rows
    nbytes = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):  # drop the file's pages: the first pass reads the disk
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    cache = np.load(path, mmap_mode="r")
    order = np.random.default_rng(1).permutation(s.cache_images)
    batches = [np.sort(order[i:i + s.cache_batch]) for i in range(0, s.cache_images, s.cache_batch)]

    def one_pass(to_device: bool, cache=cache) -> float:
        started = time.perf_counter()
        for idx in batches:
            batch = torch.from_numpy(np.ascontiguousarray(cache[idx]))  # one fancy-indexed read a batch
            if to_device and ctx.cuda:
                batch.pin_memory().to(ctx.device, non_blocking=True)
        ctx.sync()
        return time.perf_counter() - started
    cold = one_pass(False)
    warm = min(one_pass(False) for _ in range(2))
    gb = nbytes / 1e9
    ctx.rates["cache_read_gbps_cold"] = gb / cold
    ctx.rates["cache_read_gbps_warm"] = gb / warm
    table.add("decoded-cache read GB/s, first pass", f"{gb / cold:,.2f}",
              f"{s.cache_images:,} rows of {size} px uint8 ({gb:.2f} GB), random batches of {s.cache_batch}, "
              f"file pages dropped first ({s.cache_images / cold:,.0f} images/s)")
    table.add("decoded-cache read GB/s, page cache", f"{gb / warm:,.2f}", f"{s.cache_images / warm:,.0f} images/s")
    if ctx.cuda:
        h2d = one_pass(True)
        ctx.rates["cache_read_h2d_ips"] = s.cache_images / h2d
        table.add("cache read + pin + host-to-device images/s", f"{s.cache_images / h2d:,.0f}", f"{gb / h2d:.2f} GB/s")
    del cache
    path.unlink()


# ------------------------------------------------------------------------------------------------
# a real-size point, DDP, the grid
# ------------------------------------------------------------------------------------------------

def part_real_point(table: Table, ctx: Ctx):
    import wilds  # noqa: F401  (the real-size point reads the data through the WILDS loader)
    import bench_real_scale
    argv = ctx.sizes.real_argv + ([] if ctx.smoke else ["--root", str(ctx.workdir / "real")]) + \
        ["--device", str(ctx.device)]
    started = time.perf_counter()
    out = bench_real_scale.run(bench_real_scale.parse(argv))
    seconds = time.perf_counter() - started
    table.add("real-size point (bench_real_scale.py)", f"{seconds:,.0f} s end to end",
              f"`clipdg synth --profile real` data written, decoded, loaded + augmented, trained, evaluated: "
              f"decode {out['decode_fmow']:,.0f} (FMoW PNG) / {out['decode_iwildcam']:,.0f} (iWildCam JPEG) "
              f"images/s a core, load + augment {out['load_augment']:,.0f}, train {out['train']:,.0f}, "
              f"eval {out['eval']:,.0f} images/s")


def _ddp_worker(rank: int, world: int, backend: str, sizes: Sizes, port: int, queue):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device.index if device.index is not None else 0)
            torch.backends.cuda.matmul.allow_tf32 = True
        ctx = Ctx(device, sizes, backend != "nccl", Path(tempfile.gettempdir()))
        model, norm, size = classifier(ctx, FMOW_PROMPTS)
        model.train()
        g = torch.Generator().manual_seed(rank)
        x = torch.randint(0, 256, (sizes.batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
        y = torch.randint(0, FMOW_PROMPTS, (sizes.batch,), generator=g).to(device)
        ddp = DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
        step = make_train_step(ctx, model, ddp, norm, x, y, False)
        seconds = ctx.timed(step, sizes.steps, sizes.warmup)
        if rank == 0:
            queue.put(seconds)
    finally:
        dist.destroy_process_group()


def part_ddp(table: Table, ctx: Ctx):
    n = torch.cuda.device_count() if ctx.cuda else ctx.ddp_cpu
    if n < 2:
        table.add("DDP training images/s", "skipped: one GPU visible" if ctx.cuda else
                  "skipped: no GPU (--ddp-cpu 2 runs it with gloo on CPU processes)",
                  "one point per GPU (`clipdg run -j N`) is the grid's way anyway")
        return
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = "nccl" if ctx.cuda else "gloo"
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, args=(n, backend, ctx.sizes, port, queue), nprocs=n, join=True)
    seconds = queue.get()
    ips = n * ctx.sizes.batch / seconds
    single = ctx.rates.get("train_ips[eager]")
    ctx.rates["ddp_ips"] = ips
    table.add(f"DDP training images/s, {n} x {backend}", f"{ips:,.0f}",
              f"batch {ctx.sizes.batch} a rank, eager" +
              (f"; {ips / (n * single):.0%} of {n} x one-device eager" if single else ""))


def part_checkpoints(table: Table, ctx: Ctx):
    """Checkpoint bytes per run: `train.checkpoint_estimate` of the paper's run (text tower trained,
    SWA), and one checkpoint `train.save_checkpoint` writes for this model against that estimate."""
    from clipdg_nb import train
    from clipdg_nb.averaging import RunningAverage
    from clipdg_nb.config import FinetuneConfig
    estimate = train.checkpoint_estimate(FinetuneConfig(model=ctx.sizes.model, pretrained=None, epochs=20, swa_last_k=10))
    ctx.rates["checkpoint_bytes"] = estimate
    model, norm, size = classifier(ctx, FMOW_PROMPTS)
    model.train()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8).to(ctx.device)
    step = make_train_step(ctx, model, model, norm, x, torch.tensor([0, 1], device=ctx.device), False)
    step()  # Adam's state exists after a step
    swa = RunningAverage()
    swa.update(model.state_dict())
    path = ctx.workdir / "checkpoint" / train.CHECKPOINT
    train.save_checkpoint(path, model, step.optimizer, {"swa": swa}, train.cpu_state(model), {"epoch": 0})
    written = path.stat().st_size
    path.unlink()
    table.add("checkpoint bytes per run", f"{estimate / 1e9:.2f} GB",
              f"weights, best weights, Adam moments, SWA (fp32), estimated on the meta device; one written for "
              f"{ctx.sizes.model}: {written / 1e9:.3f} GB, {written / estimate - 1:+.2%} over the estimate "
              "(header, RNG, the prompts' token rows)")


def part_grid(table: Table, ctx: Ctx):
    import bench_real_scale as real
    r = ctx.rates
    # checkpoint_every=1: one checkpoint an epoch per run, written at CHECKPOINT_WRITE_GB_S
    written = len(real.FRACTIONS) * real.SEEDS * real.LRS * 2 * real.EPOCHS * r.get("checkpoint_bytes", 0)
    for name, train_ips in (("fmow", r["train_ips_best"]), ("iwildcam", r["train_ips_iwildcam"])):
        train_images, eval_images = real.grid_images(name)
        hours = (train_images / train_ips + eval_images / r["eval_ips"] + written / CHECKPOINT_WRITE_GB_S / 1e9) / 3600
        r[f"grid_hours_{name}"] = hours
        fmow = name == "fmow"
        table.add(f"{'FMoW' if fmow else 'iWildCam'} paper grid, projected", f"{hours:,.1f} GPU-hours",
                  f"{train_images / 1e6:,.0f} M training images at {train_ips:,.0f}/s + {eval_images / 1e6:,.0f} M "
                  f"evaluation images at {r['eval_ips']:,.0f}/s + {written / 1e12:,.1f} TB of checkpoints (one an "
                  f"epoch) at an assumed {CHECKPOINT_WRITE_GB_S:g} GB/s; {hours / 8:,.1f} h on eight GPUs (a point per GPU)",
                  f"<= {TARGET_FMOW_HOURS:g} h on one H200" if fmow else "",
                  judged(hours <= TARGET_FMOW_HOURS, ctx.smoke) if fmow else "")
    hours = r["grid_hours_fmow"]
    print(f"TARGET fmow_grid: {hours:,.1f} GPU-hours (target <= {TARGET_FMOW_HOURS:g}): "
          f"{judged(hours <= TARGET_FMOW_HOURS, ctx.smoke)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (always so without a GPU)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--out", type=Path, help="write gpu_check.md (the table) and gpu_check.json (the rates) here")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--ddp-cpu", type=int, default=0, help="without a GPU: the DDP row with this many gloo "
                    "processes (checks the code path; slow)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["training", "augment", "cache", "real", "ddp", "checkpoints"],
                    help="parts to leave out")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    smoke = args.smoke or device.type != "cuda"
    sizes = SMOKE if smoke else GPU
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Ctx(device, sizes, smoke, workdir)
        ctx.ddp_cpu = args.ddp_cpu
        print(f"gpu_check on {device_name(ctx)}, torch {torch.__version__}, {'SMOKE sizes' if smoke else 'full sizes'}"
              f", model {sizes.model}")
        table = Table()
        table.part("peak", part_peak, ctx)
        parts = [("training", "training and evaluation", part_training), ("augment", "augmentation", part_augment),
                 ("cache", "decoded-cache reads", part_cache), ("real", "real-size point", part_real_point),
                 ("ddp", "DDP", part_ddp), ("checkpoints", "checkpoints", part_checkpoints)]
        for key, what, fn in parts:
            if key not in args.skip:
                table.part(what, fn, ctx)
        if "train_ips_best" in ctx.rates and "eval_ips" in ctx.rates:
            table.part("paper grids, projected", part_grid, ctx)
        else:
            table.add("paper grids, projected", "skipped: no training / evaluation rate")
    took = time.perf_counter() - started
    head = (f"gpu_check: {device_name(ctx)}; torch {torch.__version__}; {sizes.model}"
            f"{' (SMOKE: tiny sizes, numbers not meaningful)' if smoke else ''}; {took:.0f} s")
    text = f"{head}\n\n{table.markdown()}\n"
    print("\n" + text)
    if args.out:
        from clipdg_nb.paths import atomic_path
        rates = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in ctx.rates.items()}
        record = json.dumps({"device": device_name(ctx), "torch": torch.__version__, "smoke": smoke,
                             "seconds": round(took, 1), "rates": rates, "rows": table.rows}, indent=1)
        for name, content in (("gpu_check.md", text), ("gpu_check.json", record)):
            with atomic_path(args.out / name) as tmp:
                Path(tmp).write_text(content)
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
