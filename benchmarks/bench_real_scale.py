"""A real-size rehearsal of one paper point, stage by stage, and the paper grid projected from it.

    python benchmarks/bench_real_scale.py                       # CPU here: small counts
    python benchmarks/bench_real_scale.py --device cuda --train-images 2048 --eval-images 4096

What runs is the real code path at the real sizes and formats:
  data     `clipdg synth --profile real`: FMoW as 224x224 PNG, iWildCam as 1920x1080 JPEG (written once
           under outputs/bench/real/);
  weights  ViT-B-32 with random weights saved to a local safetensors file and loaded through the path
           real OpenAI weights take (`load_clip("ViT-B-32", file, quick_gelu=True)`);
  decode   the per-split decode cache filled with one thread (images/s per core), bytes per image;
  load     the training loader (whole-batch memmap reads) + the batched augmentation on the device;
  train    one epoch's steps of `ClipClassifier` with both towers trainable on iWildCam's 182 class
           prompts (short-context text), cross-entropy, Adam: fwd + bwd + step;
  eval     `predict_logits` over the evaluation images.
It prints images/s per stage, the peak RSS and the cache bytes per image, then projects the paper
grid (8 fractions x 3 seeds x 4 learning rates x {CLIP fine-tune, vision-only}, 20 epochs) for a
machine with `--cores` cores and a GPU whose training / evaluation rates are measured here (with
`--device cuda`) or given (`--gpu-train-ips`, `--gpu-eval-ips`). A projection, not a measurement.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, machine, parse_args  # noqa: E402

from clipdg_nb.data import class_names, load_dataset, prompt_functions, prompt_templates, split_indices  # noqa: E402
from clipdg_nb.evaluate import predict_logits  # noqa: E402
from clipdg_nb.images import ArrayImages, Normalize, SplitCache  # noqa: E402
from clipdg_nb.images.augment import BatchAugment  # noqa: E402
from clipdg_nb.models import ClipClassifier, load_clip, save_weights  # noqa: E402
from clipdg_nb.demo.synthetic import real_profile_config, write_synthetic  # noqa: E402
from clipdg_nb.devices import autocast, resolve_device, resolve_precision  # noqa: E402

# The real benchmarks (WILDS): images per split.
REAL = {"fmow": {"train": 76_863, "id_val": 11_483, "id_test": 11_327, "val": 19_915, "test": 22_108},
        "iwildcam": {"train": 129_809, "id_val": 7_314, "id_test": 8_154, "val": 14_961, "test": 42_791}}
FRACTIONS = (0.03, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SEEDS, LRS, EPOCHS, VARIANTS = 3, 4, 20, 3  # best / last / SWA evaluated on every eval split


def grid_images(name: str) -> tuple[float, float]:
    """(training, evaluation) images of the paper grid on `name` (fmow | iwildcam) at the real sizes:
    8 fractions x 3 seeds x 4 learning rates x {CLIP fine-tune, vision-only costed as CLIP}, 20 epochs,
    id_val every epoch and best / last / SWA on every evaluation split at the end."""
    sizes = REAL[name]
    eval_split = sizes["id_val"] + sizes["id_test"] + sizes["val"] + sizes["test"]
    runs = len(FRACTIONS) * SEEDS * LRS * 2
    train_images = sum(FRACTIONS) * sizes["train"] * EPOCHS * SEEDS * LRS * 2
    eval_images = runs * (EPOCHS * sizes["id_val"] + VARIANTS * eval_split)
    return train_images, eval_images


def hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h"


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def decode_rate(dataset, split: str, count: int, cache_dir: Path, size: int = 224) -> tuple[float, int]:
    """Images/s of one thread filling the split cache, and the cache's bytes per image."""
    cache = SplitCache(dataset, split, size, cache_dir)
    rows = np.arange(min(count, len(cache)))
    started = time.perf_counter()
    decoded = cache.ensure(rows, workers=1)
    seconds = time.perf_counter() - started
    return rate(decoded, seconds), cache.nbytes // len(cache)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("outputs") / "bench" / "real")
    ap.add_argument("--count", type=int, default=200, help="train images per dataset written (real profile)")
    ap.add_argument("--eval-count", type=int, default=None, help="images written in each other split "
                    "(default: count // 10, at least 5)")
    ap.add_argument("--decode-images", type=int, default=64, help="images decoded per dataset for the decode rate")
    ap.add_argument("--train-images", type=int, default=16)
    ap.add_argument("--eval-images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cores", type=int, default=16, help="CPU cores of the projected machine")
    ap.add_argument("--gpu-train-ips", type=float, help="training images/s of the projected GPU (default: measured)")
    ap.add_argument("--gpu-eval-ips", type=float, help="evaluation images/s of the projected GPU (default: measured)")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights, loaded from a file)")
    return parse_args(ap, argv, root=DEFAULT_ROOT / "smoke" / "real", count=182, decode_images=4, train_images=4,
                      eval_images=4, batch_size=2, eval_count=5, model="clipdg-tiny-vit")


def main(argv=None) -> int:
    run(parse(argv))
    return 0


def run(args) -> dict:
    """The rehearsal itself; returns the measured rates (images/s) for callers (gpu_check.py)."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    print(f"machine: {machine()}; device {device}, precision {precision}")

    started = time.perf_counter()
    write_synthetic(args.root / "data", cfg=real_profile_config(args.count, n_eval=args.eval_count))
    print(f"data: real profile, {args.count} train images per dataset ({time.perf_counter() - started:.1f} s, "
          "written once)")
    weights = args.root / f"{args.model.lower()}-random-quickgelu.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        save_weights(load_clip(args.model, None, quick_gelu=True).model, weights)
    bundle = load_clip(args.model, weights, quick_gelu=True)
    size = bundle.image_size  # 224 for ViT-B-32

    # decode: one thread, a fresh cache every run
    cache_dir = args.root / f"cache-{time.time_ns()}"
    decode = {name: decode_rate(load_dataset(name, args.root / "data"), "train", args.decode_images, cache_dir, size)
              for name in ("fmow", "iwildcam")}
    ds = load_dataset("iwildcam", args.root / "data")
    train_idx = split_indices(ds, "train")[: args.train_images]
    eval_idx = split_indices(ds, "test")[: args.eval_images]
    cache = {s: SplitCache(ds, s, size, cache_dir) for s in ("train", "test")}
    cache["train"].ensure(cache["train"].rows_of(train_idx), workers=2)
    cache["test"].ensure(cache["test"].rows_of(eval_idx), workers=2)
    y = np.asarray(ds.y_array)
    train_images = ArrayImages(cache["train"].open()[cache["train"].rows_of(train_idx)], y[train_idx], train_idx)
    eval_images = ArrayImages(cache["test"].open()[cache["test"].rows_of(eval_idx)], y[eval_idx], eval_idx)

    # load + augment: whole-batch reads, transfer, batched augmentation on the device
    augment, norm = BatchAugment(), Normalize(bundle.mean, bundle.std).to(device)
    batches = [list(range(i, min(i + args.batch_size, len(train_idx)))) for i in range(0, len(train_idx), args.batch_size)]
    started = time.perf_counter()
    loaded = []
    for step, ks in enumerate(batches):
        x, labels, _ = train_images.__getitems__(ks)
        x = augment(x.to(device, non_blocking=True), torch.Generator(device=device).manual_seed(step))
        loaded.append((x, labels.to(device)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    load_ips = rate(len(train_idx), time.perf_counter() - started)

    # train: fwd + bwd + Adam on the 182 iWildCam prompts (short context), one warm-up step untimed
    names = class_names("iwildcam")
    model = ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, names,
                                     prompt_functions(prompt_templates("iwildcam")), text_mode="trainable").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step(x, labels):
        with autocast(device, precision):
            loss = F.cross_entropy(model(norm(x)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step(*loaded[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for x, labels in loaded:
        step(x, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_ips = rate(len(train_idx), time.perf_counter() - started)

    started = time.perf_counter()
    predict_logits(model, eval_images, norm, device, batch_size=max(args.batch_size, 32), precision=precision)
    eval_ips = rate(len(eval_idx), time.perf_counter() - started)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print("\nstage                          images/s")
    print(f"decode FMoW 224 px PNG, 1 core  {decode['fmow'][0]:9.1f}")
    print(f"decode iWildCam 1920x1080 JPEG  {decode['iwildcam'][0]:9.1f}   (1 core, full decode)")
    print(f"load + augment ({device.type})           {load_ips:9.1f}")
    print(f"train step {args.model}, 182 prompts {train_ips:8.2f}   (batch {args.batch_size})")
    print(f"evaluation {args.model}              {eval_ips:8.2f}")
    print(f"peak RSS {rss_gib:.2f} GiB; cache {decode['iwildcam'][1]:,} bytes an image ({size} px uint8)")

    gpu_train = args.gpu_train_ips or train_ips
    gpu_eval = args.gpu_eval_ips or eval_ips
    source = "measured here" if not (args.gpu_train_ips or args.gpu_eval_ips) else "given"
    print(f"\nprojection of the paper grid on {args.cores} cores and a device at {gpu_train:,.0f} train / "
          f"{gpu_eval:,.0f} eval images/s ({source}); a projection, not a measurement:")
    for name, sizes in REAL.items():
        n_images = sum(sizes.values())
        train_images, eval_images = grid_images(name)
        decode_h = n_images / (decode[name][0] * args.cores) / 3600
        load_h = train_images / (load_ips * args.cores) / 3600 if device.type == "cpu" else 0.0
        gpu_h = (train_images / gpu_train + eval_images / gpu_eval) / 3600
        disk_gb = n_images * decode[name][1] / 1e9
        print(f"  {name:9s} decode once: {hours(decode_h)} on {args.cores} cores ({n_images:,} images, "
              f"{disk_gb:.1f} GB of cache); {train_images / 1e6:,.0f} M training + {eval_images / 1e6:,.0f} M "
              f"evaluation images: {hours(gpu_h)} on one device, {hours(gpu_h / 8)} on eight (a point per device)"
              + (f"; CPU augmentation alone {hours(load_h)}" if load_h else ""))
    print(f"RATIO train/decode per core (iWildCam): {train_ips / decode['iwildcam'][0]:.2f}x")
    return {"decode_fmow": decode["fmow"][0], "decode_iwildcam": decode["iwildcam"][0], "load_augment": load_ips,
            "train": train_ips, "eval": eval_ips, "cache_bytes_per_image": decode["iwildcam"][1], "rss_gib": rss_gib}


if __name__ == "__main__":
    sys.exit(main())
