"""Decode work and disk of the paper grid's subsets: a cache per subset (old) vs one per split (new).

    OMP_NUM_THREADS=1 python benchmarks/bench_cache_grid.py          # 300 train JPEGs, 1920x1080

Writes a `profile='real'` synthetic iWildCam (1920x1080 JPEGs, the WILDS on-disk format) under
outputs/bench/cache_grid, draws the grid's train subsets (fractions 0.03 ... 1.0 x seeds 0 1 2,
`fraction_indices`), and
(a) OLD, counted: one cache entry per subset, so every subset's images are decoded and stored again
    (decode work = sum of subset sizes, disk = that many 224 px uint8 images);
(b) NEW, run: every subset requested from the per-split cache in grid order, counting the images
    actually decoded (the decoder is instrumented) and the bytes the cache occupies on disk.
Then times JPEG draft decoding against a full decode on the same files (one thread) and reports
the mean pixel difference after the 224 px resize + crop.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, machine, parse_args  # noqa: E402

from clipdg_nb import images  # noqa: E402
from clipdg_nb.images import decode  # noqa: E402  (the decoder the cache calls, instrumented below)
from clipdg_nb.data import fraction_indices, load_dataset, split_indices  # noqa: E402
from clipdg_nb.demo.synthetic import real_profile_config, write_synthetic  # noqa: E402

FRACTIONS = (0.03, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SEEDS = (0, 1, 2)


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def time_decodes(paths, image_size: int, draft: bool, factor: int, repeats: int):
    """Best-of-`repeats` images/s of one thread, and the decoded arrays."""
    best, out = 0.0, None
    for _ in range(repeats):
        started = time.perf_counter()
        out = [decode._decode_image(p, image_size, draft, draft_factor=factor) for p in paths]
        best = max(best, len(paths) / (time.perf_counter() - started))
    return best, np.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT / "cache_grid", help="where the synthetic data goes")
    p.add_argument("--images", type=int, default=300, help="train images (1920x1080 JPEGs; at least 182)")
    p.add_argument("--eval-images", type=int, default=10, help="images in each other split")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2, help="decode threads of the new cache")
    p.add_argument("--draft-images", type=int, default=30, help="JPEGs timed for draft vs full decode")
    p.add_argument("--repeats", type=int, default=2, help="timing repeats (the best is reported)")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="the grid's train fractions")
    # smoke: the same real-profile iWildCam as bench_real_scale.py --smoke, so it is written once
    args = parse_args(p, argv, root=DEFAULT_ROOT / "smoke" / "real" / "data", images=182, eval_images=5,
                      draft_images=3, repeats=1, fractions=[0.03, 0.1])

    print(f"machine: {machine()}")
    cfg = real_profile_config(args.images, n_eval=args.eval_images)
    started = time.perf_counter()
    write_synthetic(args.root, datasets=["iwildcam"], cfg=cfg)
    if time.perf_counter() - started > 1:
        print(f"wrote synthetic iWildCam (profile 'real', {cfg.iwildcam_sizes['train']} train JPEGs at 1920x1080) "
              f"under {args.root} in {time.perf_counter() - started:.1f} s")
    ds = load_dataset("iwildcam", args.root)
    train = split_indices(ds, "train")
    size = args.image_size
    row_bytes = size * size * 3
    grid = [(f, s, fraction_indices(ds, f, s)) for f in args.fractions for s in SEEDS]

    # (a) the old scheme: an entry per subset
    old_decodes = sum(len(idx) for _, _, idx in grid)
    old_disk = sum(128 + len(idx) * row_bytes for _, _, idx in grid)  # .npy header + rows

    # (b) the new scheme, run for every subset in grid order, decodes counted
    cache_dir = args.root / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    count, lock, real = [0], threading.Lock(), decode._decode_image

    def counted(*args, **kwargs):
        with lock:
            count[0] += 1
        return real(*args, **kwargs)

    decode._decode_image = counted  # the module global the cache's `load_uint8` looks up at each call
    try:
        started = time.perf_counter()
        for f, s, idx in grid:
            arr = images.decode_split(ds, idx, size, cache_dir, workers=args.workers)
            assert len(arr) == len(idx)
        new_s = time.perf_counter() - started
    finally:
        decode._decode_image = real
    new_decodes = count[0]
    new_disk = disk_bytes(cache_dir)
    union = np.unique(np.concatenate([idx for _, _, idx in grid]))
    assert new_decodes == len(union), (new_decodes, len(union))
    started = time.perf_counter()
    images.SplitCache(ds, "train", size, cache_dir)
    key_ms = (time.perf_counter() - started) * 1e3

    print(f"grid: {len(args.fractions)} fractions x {len(SEEDS)} seeds = {len(grid)} subsets of {len(train)} train images, "
          f"{size} px")
    print(f"  OLD (entry per subset): {old_decodes:6d} images decoded, {old_disk / 1e6:8.1f} MB on disk")
    print(f"  NEW (entry per split):  {new_decodes:6d} images decoded, {new_disk / 1e6:8.1f} MB on disk "
          f"(union of the subsets = {len(union)} images; filled in {new_s:.1f} s with {args.workers} threads)")
    print(f"  opening the split's entry (stat {len(train)} files, key): {key_ms:.1f} ms")
    print(f"RATIO decode work: {old_decodes / new_decodes:.1f}x")
    print(f"RATIO disk: {old_disk / new_disk:.1f}x")

    # JPEG draft vs full decode, one thread, same files
    paths = [str(images.image_path(ds, int(i))) for i in train[: args.draft_images]]
    full_rate, full = time_decodes(paths, size, False, decode.DRAFT_FACTOR, args.repeats)
    print(f"jpeg 1920x1080 -> {size} px, 1 thread, {len(paths)} files: full decode {full_rate:.1f} images/s")
    results = {}
    for factor in (1, 2):
        rate, drafted = time_decodes(paths, size, True, factor, args.repeats)
        diff = np.abs(drafted.astype(np.int16) - full.astype(np.int16))
        results[factor] = (rate, diff.mean(), (diff > 8).mean())
        print(f"  draft to shorter side >= {factor} x {size}: {rate:.1f} images/s ({rate / full_rate:.1f}x), "
              f"mean |diff| {diff.mean():.2f}/255, max {diff.max()}, {100 * (diff > 8).mean():.2f} % of values off by > 8")
    rate, mean_diff, _ = results[decode.DRAFT_FACTOR]
    print(f"RATIO jpeg draft: {rate / full_rate:.1f}x (DRAFT_FACTOR={decode.DRAFT_FACTOR}, mean pixel difference "
          f"{mean_diff:.2f}/255)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
