"""Decode once vs decode every epoch: one training epoch's data time, both ways in one run.

    python benchmarks/bench_decode.py            # 600 synthetic FMoW images at 224 px, batch 128

(a) `image_split(cache=False)`: PIL opens, decodes, resizes and crops every image every epoch;
(b) `image_split(cache=True)`: the uint8 memmap cache (built once beforehand, its build timed
    separately) read in the sampler's order.
Both are iterated by the same DataLoader (the training loop's sampler, batch size and workers),
with no model, so the numbers are the data pipeline alone. Prints images/s and the ratio.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, batch_loader, machine, parse_args, synthetic_fmow  # noqa: E402

from clipdg_nb.data import SAMPLERS, metadata_column, split_indices  # noqa: E402
from clipdg_nb.images import image_split  # noqa: E402


def epoch_images_per_s(images, groups, batch_size: int, workers: int, seed: int = 0) -> float:
    sampler = SAMPLERS["group_uniform"](groups, seed)  # the study's sampler: random access
    sampler.set_epoch(0)
    loader = batch_loader(images, batch_size=batch_size, sampler=sampler, num_workers=workers)
    started, n = time.perf_counter(), 0
    for x, _, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - started)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT / "decode", help="where the synthetic data goes")
    p.add_argument("--images", type=int, default=600, help="synthetic train images")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (the config's num_workers)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per way (the best is reported)")
    args = parse_args(p, argv, root=DEFAULT_ROOT / "smoke" / "decode", images=64, image_size=64,
                      batch_size=32, epochs=1)

    print(f"machine: {machine()}")
    ds = synthetic_fmow(args.root, args.image_size, args.images)
    idx = split_indices(ds, "train")
    groups = metadata_column(ds, "region")[idx]
    cache_dir = args.root / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    started = time.perf_counter()
    cached = image_split(ds, idx, args.image_size, cache=True, cache_dir=cache_dir)  # decode once
    build_s = time.perf_counter() - started
    pil = image_split(ds, idx, args.image_size, cache=False)
    x_pil, x_cached = pil[5][0], cached[5][0]
    assert torch.equal(x_pil, x_cached), "the cache must hold the same pixels as PIL"

    pil_rate = max(epoch_images_per_s(pil, groups, args.batch_size, args.workers) for _ in range(args.epochs))
    cache_rate = max(epoch_images_per_s(cached, groups, args.batch_size, args.workers) for _ in range(args.epochs))
    size_mb = np.prod(cached.images.shape) / 1e6
    print(f"{len(idx)} images, {args.image_size} px, batch {args.batch_size}, {args.workers} workers")
    print(f"  cache build (once):      {build_s:7.2f} s  ({len(idx) / build_s:8.0f} images/s, {size_mb:.0f} MB uint8)")
    print(f"  PIL every epoch:         {pil_rate:8.0f} images/s  (epoch {len(idx) / pil_rate:.2f} s)")
    print(f"  decoded cache (memmap):  {cache_rate:8.0f} images/s  (epoch {len(idx) / cache_rate:.2f} s)")
    print(f"RATIO decoded cache / PIL data time per epoch: {cache_rate / pil_rate:.1f}x faster")
    saved = len(idx) / pil_rate - len(idx) / cache_rate
    print(f"  the one-time build pays for itself after {build_s / max(saved, 1e-9):.1f} epoch(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
