"""What deciding "this sweep point is done" costs, by content (`point.is_done`) vs by name (the old check).

    python benchmarks/bench_done_check.py                      # FMoW real profile, 4,000 train images, ViT-B-32 file
    python benchmarks/bench_done_check.py --train-images 20000

The data is `clipdg synth --profile real` (FMoW as 224x224 PNG, written once under
outputs/bench/done_check/); the weights a ViT-B-32 with random weights saved to a safetensors file
(the size of OpenAI's). One stage of 02_few_shot_sweep points (fraction x seed, each with
finetune + linear_probe over four learning rates: 5 runs a point) is marked done with records of
the identities the points would make, as a finished sweep leaves them, without training anything.
Then, in one process:
  old    the marker's parameters match and its run records exist (no identity computed);
  cold   the new check of the whole stage with no digest memoised (the weights file and the
         metadata hashed; the page cache is warm: the files were just written);
  warm   the same again: digests memoised by (path, size, mtime, ctime, inode), the image folder
         scanned once per stage (`fingerprint.one_scan_per_folder`);
  alone  one point checked on its own, warm (`run_point`'s check: one scan of the folder).
Prints milliseconds per point of each and the ratios to the old check, and the scan's cost per image
file, from which the real FMoW (141,696 images in its splits) is projected.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, machine, parse_args  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_few_shot_sweep.ipynb"
REAL_FMOW_IMAGES = 141_696


def old_is_done(point) -> bool:
    """The check before issue 26: parameters and the listed records, by name."""
    from clipdg_nb.paths import read_json, to_jsonable
    from clipdg_nb.runs import Run

    marker = read_json(point.done_path)
    return (point.output.is_file() and isinstance(marker, dict) and marker.get("parameters") == to_jsonable(point.parameters)
            and all(Run(point.root / d).is_done() for d in marker.get("run_dirs", [])))


def finished_sweep(root: Path, data: Path, weights: Path, model: str, fractions, seeds):
    """An experiment whose points are marked done with records of the runs they would make now."""
    import yaml

    from clipdg_nb.paths import write_json
    from clipdg_nb.pipeline.experiment import load_experiment
    from clipdg_nb.pipeline.validate import point_configs
    from clipdg_nb.runs import Run

    doc = {"experiment": "done_check", "defaults": {"root_dir": str(data), "model": model, "pretrained": str(weights),
                                                    "output_dir": "outputs/runs", "cache_dir": "outputs/cache"},
           "stages": [{"name": "sweep", "notebook": str(NOTEBOOK),
                       "grid": {"fraction": list(fractions), "seed": list(seeds)},
                       "params": {"dataset": "fmow", "methods": ["finetune", "linear_probe"],
                                  "lrs": [1.0e-2, 1.0e-3, 1.0e-4, 1.0e-5]}}]}
    (root / "outputs/cache").mkdir(parents=True, exist_ok=True)
    (root / "e.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    stage = load_experiment(root / "e.yaml", root=root).stages[0]
    for point in stage.points:
        runs = []
        for cfg in point_configs(point):
            run = Run.of(cfg)
            write_json(run.path / "result.json", {"identity": run.identity, "metrics": {}, "selection": {}})
            runs.append(str(run.path.relative_to(root)))
        point.output.parent.mkdir(parents=True, exist_ok=True)
        point.output.write_text("{}")
        write_json(point.done_path, {"parameters": point.parameters, "run_dirs": runs})
    return stage


def timed(check, points, scoped: bool) -> tuple[float, list[bool]]:
    from clipdg_nb.fingerprint import one_scan_per_folder

    start = time.perf_counter()
    if scoped:
        with one_scan_per_folder():
            done = [check(p) for p in points]
    else:
        done = [check(p) for p in points]
    return time.perf_counter() - start, done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=4000, help="FMoW train images (each other split: a tenth)")
    ap.add_argument("--model", default="ViT-B-32", help="whose random weights are saved as the weights file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT / "done_check")
    args = parse_args(ap, argv, train_images=40, model="clipdg-tiny-vit", seeds=1, root=DEFAULT_ROOT / "smoke" / "done_check")
    from clipdg_nb.demo.synthetic import real_profile_config, write_synthetic
    from clipdg_nb.fingerprint import DIGEST_MEMO, dataset_fingerprint
    from clipdg_nb.models import load_clip, save_weights
    from clipdg_nb.pipeline.point import is_done

    args.root = args.root.resolve()
    data = args.root / f"data-{args.train_images}"
    started = time.perf_counter()
    write_synthetic(data, datasets=["fmow"], cfg=real_profile_config(args.train_images))
    print(f"{machine()}\nFMoW real profile, {args.train_images} train images under {data} "
          f"({time.perf_counter() - started:.1f} s to write or find)")
    weights = args.root / f"{args.model}.safetensors"
    if not weights.is_file():
        save_weights(load_clip(args.model).model, weights)
    project = args.root / "project"
    shutil.rmtree(project, ignore_errors=True)
    stage = finished_sweep(project, data, weights, args.model, (0.03, 0.1, 0.3, 1.0), range(args.seeds))
    points = stage.points
    runs = sum(len(json.loads(p.done_path.read_text())["run_dirs"]) for p in points)
    listing = dataset_fingerprint(data / "fmow_v1.1")["images"]
    (project / "outputs/cache" / DIGEST_MEMO).unlink(missing_ok=True)  # cold: nothing memoised

    old_s, old_done = timed(old_is_done, points, scoped=False)
    cold_s, cold_done = timed(is_done, points, scoped=True)
    warm_s, warm_done = timed(is_done, points, scoped=True)
    alone_s, alone_done = timed(is_done, points[:1], scoped=False)
    assert all(old_done + cold_done + warm_done + alone_done), "every point of the finished sweep must read as done"
    scan_s = min(timed(lambda p: dataset_fingerprint(data / "fmow_v1.1"), [None], scoped=False)[0] for _ in range(3))
    n = len(points)
    print(f"{n} points ({runs} runs), weights {weights.stat().st_size / 1e6:.0f} MB, {listing['files']} image files "
          f"({listing['bytes'] / 1e6:.0f} MB)")
    print(f"  old check (by name)            {1e3 * old_s / n:8.2f} ms per point")
    print(f"  new, cold (nothing memoised)   {1e3 * cold_s / n:8.2f} ms per point ({cold_s:.2f} s for the stage)")
    print(f"  new, warm (one scan per stage) {1e3 * warm_s / n:8.2f} ms per point ({warm_s:.2f} s for the stage)")
    print(f"  new, one point alone (warm)    {1e3 * alone_s:8.2f} ms")
    per_file = scan_s / max(listing["files"], 1)
    print(f"  scan of the image folder: {1e3 * scan_s:.1f} ms, {1e6 * per_file:.1f} us per file; real FMoW "
          f"({REAL_FMOW_IMAGES:,} images) projected: {REAL_FMOW_IMAGES * per_file:.1f} s per stage (a projection)")
    print(f"RATIO new warm / old check per point: {warm_s / old_s:.1f}x")
    print(f"RATIO new cold / old check per point: {cold_s / old_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
