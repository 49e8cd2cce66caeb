"""ViT-B/32 CLIP throughput: training and evaluation images/s, and the share of the device's peak.

    python benchmarks/bench_throughput.py                     # CUDA if there is one, else CPU (small defaults)
    python benchmarks/bench_throughput.py --device cuda --batch-size 128 --steps 20

`open_clip.create_model("ViT-B-32")` with random weights (the speed does not depend on them), fed
random 224 px uint8 images held in memory, so the numbers are the model's, not the disk's:
  training:   a `ClipClassifier` step as `train.fit` runs it (both towers trainable, the class
              prompts of `--classes` classes through the text tower every step, normalisation on
              the device, autocast, cross-entropy, backward, Adam step);
  evaluation: `predict_logits`' step (image tower only, the text embedded once, inference mode).
FLOPs of one step are counted with `torch.utils.flop_counter.FlopCounterMode`; achieved FLOP/s over
the peak gives the model FLOP utilisation (MFU). Peak: on CUDA from a table by device name and
precision, on CPU cores x clock x 32 fp32 FLOP/cycle (AVX2: two 8-wide FMA units), an estimate;
`--peak-tflops` overrides either.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args  # noqa: E402

from clipdg_nb.data import class_names, prompt_templates, render_prompt  # noqa: E402
from clipdg_nb.devices import autocast as autocast_for  # noqa: E402
from clipdg_nb.images import Normalize  # noqa: E402
from clipdg_nb.devices import resolve_device, resolve_precision  # noqa: E402

# Dense peak TFLOP/s (no sparsity) of the tensor cores: (bf16/fp16, tf32). SXM parts; PCIe ones are lower.
PEAK_TFLOPS = {
    "H200": (989.0, 494.7), "H100": (989.0, 494.7), "GH200": (989.0, 494.7),
    "A100": (312.0, 156.0), "A800": (312.0, 156.0), "L40S": (362.0, 183.0), "A10": (125.0, 62.5),
    "L4": (121.0, 60.0), "V100": (125.0, 15.7), "RTX 4090": (165.2, 82.6), "RTX 3090": (71.0, 35.6),
}


def cpu_peak_tflops(threads: int) -> tuple[float, str]:
    """threads x clock x fp32 FLOP/cycle: 32 with AVX2+FMA (two 8-wide FMA units), 64 with AVX-512
    (two 16-wide), 16 otherwise; the clock from /proc/cpuinfo (2.5 GHz when unknown). Turbo clocks
    and one-FMA-unit parts make the true peak differ: an estimate."""
    ghz, source, flags = 2.5, "assumed", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"flags\s*:(.*)", text).group(1).split()) if "flags" in text else set()
        mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
        named = re.search(r"model name\s*:.*@\s*([\d.]+)GHz", text)
        if named:
            ghz, source = float(named.group(1)), "nominal, from the model name"
        elif mhz:
            ghz, source = max(mhz) / 1000, "from /proc/cpuinfo"
    except OSError:
        pass
    per_cycle, isa = (64, "AVX-512") if "avx512f" in flags else (32, "AVX2+FMA") if {"avx2", "fma"} <= flags \
        else (16, "SSE")
    return threads * ghz * per_cycle / 1000, (f"ESTIMATE: {threads} core(s) x {ghz:.2f} GHz ({source}) x "
                                               f"{per_cycle} fp32 FLOP/cycle ({isa})")


def gpu_peak_tflops(precision: str) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name()
    for key, (low, tf32) in PEAK_TFLOPS.items():
        if key in name:
            peak = tf32 if precision == "fp32" else low
            kind = "TF32" if precision == "fp32" else "bf16/fp16"
            return peak, f"{name}: {peak:g} TFLOP/s dense {kind} (table)"
    return None, f"{name}: not in the table; pass --peak-tflops"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: 128 on CUDA, 8 on CPU)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="(default: 512 on CUDA, 16 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps of each kind (default: 20 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 on CUDA, 0 on CPU; "
                   "the FLOP-counting step warms up too)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CUDA, fp32 on CPU (as train.fit)")
    p.add_argument("--classes", type=int, default=62, help="prompts through the text tower each step (FMoW 62, "
                   "iWildCam 182)")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifier (FinetuneConfig.compile)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, overriding the table/estimate")
    args = parse_args(p, argv, model="clipdg-tiny-vit", batch_size=4, eval_batch_size=8, steps=1, warmup=0)

    import open_clip
    from clipdg_nb.models import ClipClassifier, register_tiny_configs
    register_tiny_configs()  # --model clipdg-tiny-vit for a quick look
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precision = resolve_precision(args.precision, device)
    batch = args.batch_size or (128 if cuda else 8)
    eval_batch = args.eval_batch_size or (512 if cuda else 16)
    steps = args.steps or (20 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if device.index is not None:
            torch.cuda.set_device(device)
    print(f"machine: {machine()}")

    torch.manual_seed(0)
    clip = open_clip.create_model(args.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(args.model)
    size = clip.visual.image_size
    size = size if isinstance(size, int) else size[0]
    pp = clip.visual.preprocess_cfg
    names = (class_names("fmow") * (args.classes // 62 + 1))[:args.classes]
    template = prompt_templates("fmow", "paper")[0]
    model = ClipClassifier.zero_shot(clip, tokenizer, names, [lambda c: render_prompt(template, c)]).to(device)
    step_model = torch.compile(model) if args.compile else model
    norm = Normalize(pp["mean"], pp["std"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-4)
    x_train = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    x_eval = torch.randint(0, 256, (eval_batch, 3, size, size), dtype=torch.uint8)
    if cuda:
        x_train, x_eval = x_train.pin_memory(), x_eval.pin_memory()
    y = torch.randint(0, args.classes, (batch,), device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def train_step(m=step_model):
        x = norm(x_train.to(device, non_blocking=True))
        with autocast_for(device, precision):
            loss = F.cross_entropy(m(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def eval_step(m=step_model):
        with autocast_for(device, precision):
            return m(norm(x_eval.to(device, non_blocking=True)))

    def timed(fn, n: int) -> float:
        for _ in range(warmup):
            fn()
        sync()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - started) / n

    model.train()
    with FlopCounterMode(display=False) as counter:  # fwd + bwd of one (eager) training step, also a warm-up
        train_step(model)
    train_flops = counter.get_total_flops()
    by_module = counter.get_flop_counts()
    visual = sum(by_module.get("ClipClassifier.clip.visual", {}).values())  # fwd + bwd of the image tower
    train_s = timed(train_step, steps)

    with model.cached_text_features():
        # Counted in train mode: eval mode's fused attention kernel hides its projections from the
        # counter; the arithmetic is the same (CLIP has no dropout).
        with FlopCounterMode(display=False) as counter:
            eval_step(model)
        eval_flops = counter.get_total_flops()
        model.eval()
        eval_s = timed(eval_step, steps)
    model.train()

    if args.peak_tflops:
        peak, peak_note = args.peak_tflops, f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)"
    elif cuda:
        peak, peak_note = gpu_peak_tflops(precision)
    else:
        threads = min(torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count())
        peak, peak_note = cpu_peak_tflops(threads)

    def line(kind, n, seconds, flops):
        achieved = flops / seconds / 1e12
        mfu = f"{100 * achieved / peak:5.1f} % of peak" if peak else "peak unknown"
        return (f"  {kind:<10} batch {n:4d}: {n / seconds:9.1f} images/s  ({seconds * 1e3:8.1f} ms a step, "
                f"{flops / n / 1e9:6.2f} GFLOP an image, {achieved:8.3f} TFLOP/s, {mfu})")

    print(f"{args.model} (random init) at {size} px, {args.classes} classes, device {device}, precision {precision}"
          f"{', compiled' if args.compile else ''}, {steps} timed steps after {warmup} warm-up")
    print(line("training", batch, train_s, train_flops))
    print(f"             (per training step: image tower {visual / 1e12:.3f} TFLOP, text tower + rest "
          f"{(train_flops - visual) / 1e12:.3f} TFLOP for {args.classes} prompts)")
    print(line("evaluation", eval_batch, eval_s, eval_flops))
    print(f"  peak: {peak_note}")
    if cuda:
        print(f"  max memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
