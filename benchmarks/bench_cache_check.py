"""What verifying the decoded-image cache costs: one cached epoch's data time, with and without
the per-row checksum check, in one run.

    python benchmarks/bench_cache_check.py            # 1200 synthetic FMoW images at 224 px, batch 128
    python benchmarks/bench_cache_check.py --smoke    # seconds: 200 images at 64 px

Each way, as a process that has not read the cache before (the per-process memory of verified
rows is cleared): (a) `decode_split(verify=False)` then one epoch through the training loop's
DataLoader and sampler; (b) `decode_split(verify=True)` (every row of the subset hashed and
compared with its stored checksum) then the same epoch. The cache is built once beforehand and
the page cache is warm, so (a) is the fastest a cached epoch gets and the ratio is the worst case:
later epochs of the same process verify nothing, and a model's forward/backward is not counted.
The check reads the rows through the view's own memory map, so the pages it maps are the ones the
epoch then reads: its cost is mostly moved, not added. Prints both ways (open the view + read the
epoch; median and best of the repeats), the check alone, and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, machine, synthetic_fmow  # noqa: E402

from clipdg_nb.data import SAMPLERS, metadata_column, split_indices  # noqa: E402
from clipdg_nb.images import ArrayImages, SplitCache, decode_split  # noqa: E402
from clipdg_nb.images.cache import forget_verified  # noqa: E402
from clipdg_nb.train import _whole_batch  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU model unknown"


def epoch(ds, idx, groups, size, cache_dir, batch_size, verify: bool) -> tuple[float, float]:
    """(seconds to open the view, seconds to read one epoch through it), as a fresh process."""
    forget_verified()  # as a process that has not read the cache before
    started = time.perf_counter()
    view = decode_split(ds, idx, size, cache_dir, verify=verify)
    opened = time.perf_counter()
    images = ArrayImages(view, np.asarray(ds.y_array)[idx], idx)
    sampler = SAMPLERS["group_uniform"](groups, 0)  # the study's sampler: random access
    sampler.set_epoch(0)
    # as train._loader does: ArrayImages.__getitems__ returns the collated batch (one memmap read)
    for _ in DataLoader(images, batch_size=batch_size, sampler=sampler, num_workers=0, collate_fn=_whole_batch):
        pass
    return opened - started, time.perf_counter() - opened


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT / "cache_check", help="where the synthetic data goes")
    p.add_argument("--images", type=int, default=1200, help="synthetic train images")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=9, help="epochs timed per way (median and best reported)")
    p.add_argument("--smoke", action="store_true", help="a few seconds: 200 images at 64 px, 3 repeats")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.image_size, args.repeats = 200, 64, 3
        args.root = args.root.with_name(args.root.name + "_smoke")

    print(f"machine: {machine()}; {cpu_model()}")
    ds = synthetic_fmow(args.root, args.image_size, args.images)
    idx = split_indices(ds, "train")
    groups = metadata_column(ds, "region")[idx]
    cache_dir = args.root / "cache"
    decode_split(ds, idx, args.image_size, cache_dir)  # built once (no-op when it is there)
    cache = SplitCache(ds, "train", args.image_size, cache_dir)
    times = {False: [], True: []}
    for _ in range(args.repeats):  # interleaved, so that a busy machine slows both alike
        for verify in (False, True):
            times[verify].append(epoch(ds, idx, groups, args.image_size, cache_dir, args.batch_size, verify))
    times = {v: np.asarray(t) for v, t in times.items()}
    total = {v: t.sum(axis=1) for v, t in times.items()}

    check = float("inf")
    for _ in range(args.repeats):
        forget_verified()
        started = time.perf_counter()
        cache.verify(np.arange(len(cache)))
        check = min(check, time.perf_counter() - started)

    mb = len(idx) * args.image_size ** 2 * 3 / 1e6
    print(f"{len(idx)} images, {args.image_size} px ({mb:.0f} MB uint8), batch {args.batch_size}, 0 workers, "
          f"{args.repeats} repeats")
    for verify, name in ((False, "no check"), (True, "rows verified")):
        t = times[verify]
        print(f"  cached epoch, {name:13s}: median {np.median(total[verify]):.3f} s, best {total[verify].min():.3f} s "
              f"(open {np.median(t[:, 0]):.3f} s + read {np.median(t[:, 1]):.3f} s, medians)")
    print(f"  the check alone (own map):    {check:.3f} s  ({mb / 1e3 / max(check, 1e-9):.1f} GB/s), "
          f"{100 * check / np.median(total[False]):.1f} % of the plain epoch")
    print(f"RATIO verified / plain data time of a cached epoch (medians): "
          f"{np.median(total[True]) / np.median(total[False]):.3f} (best: {total[True].min() / total[False].min():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
