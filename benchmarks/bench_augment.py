"""Training augmentation: torchvision per sample in a loop vs `BatchAugment` on the whole batch.

Both run flip + ColorJitter(0.1, 0.1, 0.1) + RandomRotation(2) on uint8 224 px images on the
same device. Each way is timed `--repeats` times, interleaved, and the best time is kept (the
machine may be shared). Prints images/s of each and `RATIO augment: <x>x`.

    .venv/bin/python benchmarks/bench_augment.py [--device cuda] [--threads 1] [--images 256]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision.transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_times, parse_args  # noqa: E402

from clipdg_nb.images.augment import BatchAugment  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = parse_args(ap, argv, images=16, batch_size=8, size=64, repeats=1)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(dev)
    batches = images.split(args.batch_size)
    reference = T.Compose([T.RandomHorizontalFlip(), T.ColorJitter(0.1, 0.1, 0.1), T.RandomRotation(2)])
    augment = BatchAugment()
    gen = torch.Generator(device=dev)
    out = torch.empty_like(batches[0])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def per_sample():
        for batch in batches:
            torch.stack([reference(img) for img in batch])

    def batched(reuse_out=False):
        for step, batch in enumerate(batches):
            gen.manual_seed(step)  # as a training loop would: one seed per (seed, epoch, step)
            augment(batch, gen, out=out if reuse_out and len(batch) == len(out) else None)

    ways = {"torchvision per sample": per_sample, "BatchAugment": batched,
            "BatchAugment, reused out": lambda: batched(True)}
    for fn in ways.values():  # warm-up
        fn()
    best = best_times(ways, args.repeats, sync)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.images} images {args.size} px uint8, batch {args.batch_size}, {dev_name} (torch {torch.__version__})")
    for name, took in best.items():
        print(f"{name}: {args.images / took:,.0f} images/s")
    base = best["torchvision per sample"]
    print(f"RATIO augment: {base / best['BatchAugment']:.1f}x")
    print(f"RATIO augment_reused_out: {base / best['BatchAugment, reused out']:.1f}x")


if __name__ == "__main__":
    main()
