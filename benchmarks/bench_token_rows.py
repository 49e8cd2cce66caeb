"""Fine-tuning CLIP's text tower: the whole token table trained vs only the rows the prompts read.

    python benchmarks/bench_token_rows.py        # the demo's sweep point at fraction 1.0, FMoW and iWildCam

The tiny CLIP's token embedding is 93 % of its parameters, yet the class prompts read 108 of its
49,408 rows (FMoW) or 368 (iWildCam). (a) dense: the whole table trains (the code before
`models.text.UsedRowsEmbedding`, restored here by replacing `heads.train_used_rows` with a no-op);
(b) rows: only the used rows train, as `ClipClassifier` does. Each way is one `methods.run` of
`finetune` (both towers, the demo's sweep settings, random init, synthetic data written under
--workdir), interleaved --repeats times; the fastest `train_s` of each counts. Checks that both ways
predict the same class on every image of every split and variant, with metrics equal within 1e-6.
Prints train seconds and `RATIO token_rows <dataset>: <x>x`.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args  # noqa: E402

from clipdg_nb import methods  # noqa: E402
from clipdg_nb.config import FinetuneConfig  # noqa: E402
from clipdg_nb.demo.synthetic import SynthConfig, write_synthetic  # noqa: E402
from clipdg_nb.models import heads  # noqa: E402
from clipdg_nb.runs import Run  # noqa: E402


@contextlib.contextmanager
def whole_table():
    """The dense path: every row of the token table trains."""
    real = heads.train_used_rows
    heads.train_used_rows = lambda model, tokens: None
    try:
        yield
    finally:
        heads.train_used_rows = real


def same_predictions(a: dict, b: dict, runs: list) -> bool:
    """Both records' metrics within 1e-6 and their saved predicted classes equal, every variant and split."""
    for variant, splits in a["variants"].items():
        for split, metrics in splits.items():
            other = b["variants"][variant][split]
            if metrics.keys() != other.keys() or any(abs(metrics[k] - other[k]) > 1e-6 for k in metrics):
                return False
            name = None if variant == a["selection"]["variant"] else variant
            pa, pb = (run.predictions(split, variant=name) for run in runs)
            if not pa["y_pred"].equals(pb["y_pred"]):
                return False
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fmow", "iwildcam"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each way; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--small", action="store_true", help="the test suite's data sizes instead of the demo's")
    p.add_argument("--workdir", default=None, help="where the data and runs go (default: a temporary folder)")
    args = parse_args(p, argv, epochs=2, repeats=1, small=True)
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": random init is the point here
    warnings.simplefilter("ignore")  # the synthetic data's tied prompts, fitted temperatures at a bound
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        synth = SynthConfig(seed=0, image_size=32) if not args.small else SynthConfig(
            seed=0, image_size=32, fmow_sizes={"train": 248, "id_val": 62, "id_test": 62, "val": 62, "test": 62},
            iwildcam_sizes={"train": 364, "id_val": 60, "id_test": 60, "val": 60, "test": 60},
            iwildcam_locations={"id": 6, "val": 3, "test": 3})
        write_synthetic(work / "data", datasets=args.datasets, cfg=synth)
        print(f"{machine()}; tiny CLIP (random init), finetune, fraction 1.0, {args.epochs} epochs, batch 64")
        for dataset in args.datasets:
            best, records, runs = {}, {}, {}
            for _ in range(args.repeats):
                for way in ("dense", "rows"):
                    cfg = FinetuneConfig(
                        dataset=dataset, root_dir=str(work / "data"), output_dir=str(work / way), cache_dir=str(work / "cache"),
                        method="finetune", text_mode="trainable", model="clipdg-tiny-vit", pretrained=None, fraction=1.0,
                        lr=3e-4, epochs=args.epochs, step_size=3, swa_last_k=2, swa_lr=1e-4, batch_size=64)
                    with whole_table() if way == "dense" else contextlib.nullcontext():
                        records[way], runs[way] = methods.run(cfg, force=True, progress=False), Run.of(cfg)
                    best[way] = min(best.get(way, float("inf")), records[way]["timings"]["train_s"])
            same = same_predictions(records["dense"], records["rows"], [runs["dense"], runs["rows"]])
            print(f"{dataset}: train {best['dense']:.2f} s (whole table) -> {best['rows']:.2f} s (used rows); "
                  f"predictions {'identical' if same else 'DIFFER'}")
            print(f"RATIO token_rows {dataset}: {best['dense'] / best['rows']:.2f}x")
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
