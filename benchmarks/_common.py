"""Shared bits of the benchmarks: the machine line and synthetic WILDS data. Not a test."""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

DEFAULT_ROOT = Path("outputs") / "bench"


def parse_args(parser: argparse.ArgumentParser, argv=None, **smoke) -> argparse.Namespace:
    """`parser.parse_args(argv)` with a `--smoke` flag added: with it, the `smoke` values become the
    defaults (tiny sizes, seconds on a CPU), options given explicitly still win. The test suite runs
    every benchmark so (tests/test_benchmarks.py), so none of them can rot unnoticed."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, a few seconds on a CPU: checks that the benchmark runs, not its numbers")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--smoke" in argv:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def cpu_name() -> str:
    """The CPU's model name (lscpu's "Model name", read from /proc/cpuinfo), or the platform's word."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if found:
            return " ".join(found.group(1).split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming where the numbers came from."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {cpu_name()}, {cores} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def synthetic_fmow(root: Path, image_size: int, train: int, eval_size: int = 62, seed: int = 0, shift: float = 1.0):
    """A synthetic FMoW (WILDS on-disk format) under `root`, written once; returns the loaded dataset."""
    from clipdg_nb.data import load_dataset
    from clipdg_nb.demo.synthetic import SynthConfig, write_synthetic
    sizes = {"train": train, "id_val": eval_size, "id_test": eval_size, "val": eval_size, "test": eval_size}
    cfg = SynthConfig(seed=seed, image_size=image_size, shift=shift, fmow_sizes=sizes)
    started = time.perf_counter()
    write_synthetic(root, datasets=["fmow"], cfg=cfg)
    took = time.perf_counter() - started
    if took > 1:
        print(f"wrote synthetic FMoW ({train} train images, {image_size} px) under {root} in {took:.1f} s")
    return load_dataset("fmow", root)


def _whole_batch(batch):
    return batch


def batch_loader(images, **kwargs):
    """A DataLoader as the training loop builds one (train._loader): a dataset with `__getitems__`
    (the decoded cache, `ArrayImages`) hands back the collated batch itself, so no collate on top."""
    from torch.utils.data import DataLoader
    if hasattr(images, "__getitems__"):
        kwargs.setdefault("collate_fn", _whole_batch)
    return DataLoader(images, **kwargs)


def best_times(ways: dict, repeats: int, sync=lambda: None) -> dict:
    """Seconds of the fastest of `repeats` runs of each way, the ways interleaved so that a busy
    machine slows them alike; `sync` waits for the device (CUDA) before each clock read."""
    import time as _time

    best = {name: float("inf") for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            sync()
            started = _time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], _time.perf_counter() - started)
    return best
