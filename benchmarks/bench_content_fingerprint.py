"""What the opt-in content fingerprint costs: names, sizes and mtimes vs the images' bytes, in one run.

    python benchmarks/bench_content_fingerprint.py      # real-profile data (`clipdg synth --profile real`), 2000 train images a dataset

For each dataset folder (FMoW: 224x224 PNG, iWildCam: 1920x1080 JPEG), `dataset_fingerprint`:
(a) off (the default, `CLIPDG_CONTENT_FINGERPRINT` unset): one stat per image, no byte read;
(b) on, cold: no memo, every image's pages dropped from the page cache first (posix_fadvise
    DONTNEED, no root needed), so every byte is read from disk and hashed;
(c) on, warm, a new process: the in-process memo cleared, the memo file under the cache folder read;
(d) on, warm, the same process: the in-process memo;
and the memo file grown to the real image count, read as a new process reads it.
Prints the medians, the ratios to (a), the memo file's size, and each cost projected linearly to the
real datasets' image counts; the cold read also by bytes (the synthetic JPEGs are ~8x larger than
iWildCam's), at the rate measured here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, machine, parse_args  # noqa: E402

from clipdg_nb import fingerprint  # noqa: E402
from clipdg_nb.demo.synthetic import real_profile_config, write_synthetic  # noqa: E402

REAL = {"fmow_v1.1": (523_846, 53.9e9), "iwildcam_v2.0": (203_029, 12.0e9)}  # WILDS: images, download bytes


def forget() -> None:
    """As a new process: the in-process memo of image digests emptied."""
    fingerprint._IMAGE_DIGESTS.clear()
    fingerprint._MEMO_FILES.clear()


def evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn, repeat: int, before=lambda: None) -> float:
    times = []
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT / "content")
    ap.add_argument("--count", type=int, default=2000, help="train images per dataset written (real profile)")
    ap.add_argument("--repeat", type=int, default=3)
    args = parse_args(ap, argv, root=DEFAULT_ROOT / "smoke" / "content", count=182, repeat=1)
    print(machine())
    write_synthetic(args.root / "data", cfg=real_profile_config(args.count))
    for name, (real, real_bytes) in REAL.items():
        folder = args.root / "data" / name
        images = [p for p in folder.rglob("*") if p.is_file() and p.parent != folder]
        n, nbytes = len(images), sum(p.stat().st_size for p in images)
        with tempfile.TemporaryDirectory() as memo:
            os.environ.pop(fingerprint.CONTENT_ENV, None)
            fingerprint.dataset_fingerprint(folder, memo)  # the folder's entries in the kernel's caches, for both ways
            off = timed(lambda: fingerprint.dataset_fingerprint(folder, memo), args.repeat)
            os.environ[fingerprint.CONTENT_ENV] = "1"

            def cold_start(memo=memo, folder=folder):
                forget()
                for f in Path(memo).glob("images-*.json"):
                    f.unlink()
                evict(folder)
            cold = timed(lambda: fingerprint.dataset_fingerprint(folder, memo), args.repeat, cold_start)
            new_process = timed(lambda: fingerprint.dataset_fingerprint(folder, memo), args.repeat, forget)
            same_process = timed(lambda: fingerprint.dataset_fingerprint(folder, memo), args.repeat)
            memo_bytes = sum(f.stat().st_size for f in Path(memo).glob("images-*.json"))
            (memo_file,) = Path(memo).glob("images-*.json")
            entries = list(fingerprint._read_memo(memo_file).items())
            full = {f"{k}.{i}": v for i in range(-(-real // n)) for k, v in entries}  # the real count's memo
            fingerprint._write_memo(memo_file, dict(list(full.items())[:real]))
            load = timed(lambda: fingerprint._read_memo(memo_file), args.repeat)
            full_bytes = memo_file.stat().st_size
            os.environ.pop(fingerprint.CONTENT_ENV)
        scale, per_byte = real / n, nbytes / n
        print(f"\n{name}: {n} images, {nbytes / 1e6:.1f} MB ({per_byte / 1e3:.0f} KB each); "
              f"memo file {memo_bytes / n:.0f} bytes an image")
        for what, t in (("off (names, sizes, mtimes)", off), ("on, cold (every byte read)", cold),
                        ("on, warm, new process (memo file)", new_process), ("on, warm, same process", same_process)):
            print(f"  {what:36s} {t * 1e3:9.1f} ms  {t / n * 1e6:7.1f} us/image  -> {t * scale:7.1f} s at "
                  f"{real} images")
        print(f"  cold: {nbytes / cold / 1e6:.0f} MB/s -> {real_bytes / (nbytes / cold):.0f} s for the "
              f"{real_bytes / 1e9:.1f} GB of the real images")
        print(f"  memo file at {real} images: {full_bytes / 1e6:.0f} MB, read in {load:.2f} s (once per new process)")
        print(f"RATIO {name} cold/off: {cold / off:.1f}x")
        print(f"RATIO {name} warm new process/off: {new_process / off:.2f}x")
        print(f"RATIO {name} warm same process/off: {same_process / off:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
