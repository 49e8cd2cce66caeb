"""`clipdg`: the command line. Each subcommand is a thin call into the library (its help says what it does)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _cmd_synth(args) -> int:
    from .analysis.tables import format_summary
    from .data import load_dataset
    from .demo.synthetic import SynthConfig, real_profile_config, write_synthetic

    if args.profile == "real":  # the real benchmarks' image sizes and formats, `--count` train images
        cfg = real_profile_config(args.count, shift=args.shift, mixed_timestamps=args.mixed_timestamps)
    else:
        cfg = SynthConfig(image_size=args.image_size, shift=args.shift, mixed_timestamps=args.mixed_timestamps)
    start = time.perf_counter()
    folders = write_synthetic(args.root, datasets=args.datasets, cfg=cfg, overwrite=args.overwrite)
    print(f"synthetic WILDS data under {args.root} ({time.perf_counter() - start:.1f} s)")
    for name in folders:
        print(format_summary(name, load_dataset(name, args.root)), end="\n\n")
    return 0


def _cmd_summary(args) -> int:
    from .analysis.summary import data_kind
    from .analysis.tables import format_summary
    from .data import load_dataset

    for name in args.datasets:
        print(format_summary(name, load_dataset(name, args.root)))
        marker = data_kind([{"dataset": name, "root_dir": args.root}])["synthetic"].get(name)  # as the report says it
        print(f"SYNTHETIC data, written by `clipdg synth` ({marker}): not the WILDS benchmark\n" if marker else "")
    return 0


def _cmd_demo(args) -> int:
    from .pipeline.demo import run_demo

    return run_demo(root=args.root, jobs=args.jobs, progress=not args.no_progress)


def _cmd_pretrain_tiny(args) -> int:
    from .demo.pretrain import PretrainConfig, pretrain_tiny

    for coverage in args.coverage:
        out = pretrain_tiny(args.cache_dir, PretrainConfig(coverage=coverage), force=args.force)
        print(f"coverage {coverage:g}: clip weights: {out.clip}\nvision-only weights: {out.vision}\n"
              f"({out.meta['seconds']} s to pretrain)")
    return 0


def _cmd_run(args) -> int:
    from .pipeline.experiment import load_experiment
    from .pipeline.runner import run_experiment
    from .pipeline.slurm import write_slurm

    experiment = load_experiment(args.experiment, root=args.root)
    only = [name for item in args.only or [] for name in item.split(",") if name] or None
    if args.slurm:
        for path in write_slurm(experiment, only=only, force=args.force, jobs=args.jobs if args.jobs > 1 else None):
            print(path)
        return 0
    summary = run_experiment(experiment, jobs=args.jobs, only=only, force=args.force, dry_run=args.dry_run,
                             progress=not args.no_progress)
    print(summary.format())
    return 1 if summary.failed else 0


def _cmd_prepare(args) -> int:
    from .pipeline.prepare import prepare

    start = time.perf_counter()
    done = prepare(args.experiment, workers=args.workers, progress=not args.no_progress)
    decoded = sum(d["decoded"] for d in done)
    print(f"{len(done)} split cache(s) complete; {decoded} image(s) decoded now ({time.perf_counter() - start:.1f} s)")
    return 0


def _cmd_report(args) -> int:
    from .pipeline.report import render_reports

    written = render_reports(args.notebooks, args.out, experiment=args.experiment, stage=args.stage,
                             no_code=args.no_code, self_contained=args.self_contained, root=args.root,
                             log=lambda msg: print(f"clipdg report: {msg}", file=sys.stderr))
    for path in written:
        print(path)
    print(f"{len(written)} report(s) in {args.out}; open {args.out}/index.html (the summary; the runs, metrics, "
          "calibration and findings tables beside it, downloads.html)")
    return 0 if written else 1


def _cmd_train(args) -> int:
    """One run from a YAML of flat parameters; under torchrun, one run across processes (DDP):
    torchrun --nproc-per-node N -m clipdg_nb.cli train --config params.yaml"""
    import yaml

    from . import devices
    from .config import config_of, from_params
    from .methods import run
    from .runs import Run

    params = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{args.config}: expected a mapping of parameters, got {type(params).__name__}")
    cfg = from_params(config_of(params.get("method", "finetune")), params)
    if str(cfg.device).startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cfg.device = "cuda"  # each rank uses its own GPU (LOCAL_RANK), made current by init_from_env
    world = devices.init_from_env()
    try:
        record = run(cfg, force=args.force, progress=world.is_main and not args.no_progress)
    finally:
        devices.shutdown()
    if record is not None:
        print(f"{Run.of(cfg).path}: " + ", ".join(f"{split}/{k}={v:.4f}" for split, m in record["metrics"].items()
                                                  for k, v in m.items() if k in ("acc_avg", "F1-macro_all")))
    return 0


def _cmd_table(args) -> int:
    from .analysis.summary import experiments_table
    from .analysis.tables import format_headline

    table, selection, notes = experiments_table(args.output_dir, args.experiment or ["demo"], args.dataset, args.level,
                                                None if args.all_lrs else args.select_split, args.metric)
    for note in notes:
        print(f"clipdg table: {note}", file=sys.stderr)
    sys.stdout.write(format_headline(table, args.format, level=args.level, selection=selection))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS, DEMO_DATASETS  # the registry: one module per dataset

    parser = argparse.ArgumentParser(prog="clipdg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    quiet = argparse.ArgumentParser(add_help=False)  # the options several commands share
    quiet.add_argument("--no-progress", action="store_true", help="no progress bars")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--root", default="outputs/data",
                      help=f"folder that holds {' and '.join(DATASETS[n].folder + '/' for n in DEMO_DATASETS)}")
    data.add_argument("--datasets", nargs="+", default=list(DEMO_DATASETS), choices=list(DATASETS),
                      help=f"default: the offline demo's ({', '.join(DEMO_DATASETS)})")

    synth = sub.add_parser("synth", parents=[data], help="write small synthetic datasets in the WILDS on-disk formats")
    synth.add_argument("--image-size", type=int, default=32, help="pixels; 224 for real ViT-B/32 runs")
    synth.add_argument("--shift", type=float, default=1.0, help="strength of the domain shift (0 = none)")
    synth.add_argument("--mixed-timestamps", action="store_true",
                       help="write FMoW's real mix of ISO-8601 timestamp forms (exercises the pandas>=2 shim)")
    synth.add_argument("--overwrite", action="store_true", help="rewrite even if an identical copy exists")
    synth.add_argument("--profile", choices=["default", "real"], default="default",
                       help="real: the benchmarks' image sizes and formats (FMoW 224x224 PNG, iWildCam 1920x1080 JPEG)")
    synth.add_argument("--count", type=int, default=300, help="with --profile real: train images per dataset")
    synth.set_defaults(func=_cmd_synth)

    summary = sub.add_parser("summary", parents=[data], help="print what each split of a WILDS folder holds")
    summary.set_defaults(func=_cmd_summary)

    demo = sub.add_parser("demo", parents=[quiet], help="run the offline default end to end (synthetic data, tiny model)")
    demo.add_argument("--root", default="outputs/data", help="where the synthetic datasets are written")
    demo.add_argument("--jobs", "-j", type=int, default=2, help="sweep points run at once")
    demo.set_defaults(func=_cmd_demo)

    pre = sub.add_parser("pretrain-tiny", help="pretrain the tiny CLIP (and its vision-only twin) on synthetic captions")
    pre.add_argument("--cache-dir", default="outputs/cache")
    pre.add_argument("--coverage", type=float, nargs="+", default=[1.0], metavar="C",
                     help="share of the concepts the captions name, in [0, 1] (several: one pretraining each; "
                          "1.0, the default, is the demo's corpus; others go to pretrain/coverage-C/)")
    pre.add_argument("--force", action="store_true", help="retrain even when the cache matches")
    pre.set_defaults(func=_cmd_pretrain_tiny)

    run = sub.add_parser("run", parents=[quiet], help="execute the stages of an experiment file (parameters/*.yaml) with papermill")
    run.add_argument("experiment", help="experiment YAML, e.g. parameters/demo.yaml")
    run.add_argument("--jobs", "-j", type=int, default=1, help="points run at once (one per GPU when GPUs are visible)")
    run.add_argument("--only", action="append", metavar="STAGE",
                     help="run only this stage (repeat, or comma-separate, for several)")
    run.add_argument("--dry-run", action="store_true", help="print the points that would run; execute nothing")
    run.add_argument("--force", action="store_true", help="rerun points (and runs) that are already done")
    run.add_argument("--slurm", action="store_true", help="write Slurm job-array scripts to outputs/slurm/ instead")
    run.add_argument("--root", default=".", help="repository root: notebooks, outputs and the kernels' working folder")
    run.set_defaults(func=_cmd_run)

    prep = sub.add_parser("prepare", parents=[quiet], help="decode every split an experiment needs into the cache, with all cores")
    prep.add_argument("experiment", help="experiment YAML, e.g. parameters/paper_fmow.yaml")
    prep.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    prep.set_defaults(func=_cmd_prepare)

    report = sub.add_parser("report", help="render executed notebooks to HTML that opens offline (outputs/reports/)")
    report.add_argument("--experiment", help="only this experiment's notebooks")
    report.add_argument("--stage", help="only this stage's notebooks")
    report.add_argument("--no-code", action="store_true",
                        help="pages open with code hidden (each page's button shows it again)")
    report.add_argument("--self-contained", action="store_true",
                        help="plotly.js inline in each page (one file to send) instead of plotly.min.js once per folder")
    report.add_argument("--notebooks", default="outputs/notebooks", help="folder of executed notebooks")
    report.add_argument("--out", default="outputs/reports", help="folder for the HTML files")
    report.add_argument("--root", help="folder the run folders in done markers are relative to "
                        "(default: the one holding outputs/notebooks, then the project root)")
    report.set_defaults(func=_cmd_report)

    train = sub.add_parser("train", parents=[quiet],
                           help="one run from a YAML of parameters; under torchrun, across processes (DDP)")
    train.add_argument("--config", required=True, help="YAML of FinetuneConfig / ZeroShotConfig fields")
    train.add_argument("--force", action="store_true", help="rerun even if the run record exists")
    train.set_defaults(func=_cmd_train)

    table = sub.add_parser("table", help="headline ID / OOD numbers of experiments and their soups: per dataset, "
                           "mean and interval over seeds; several experiments side by side, paired")
    table.add_argument("--experiment", action="append", metavar="NAME",
                       help="experiment under --output-dir (default demo); repeat to put experiments side by side, "
                       "with paired differences to the first where they share points")
    table.add_argument("--dataset", choices=list(DATASETS), help="only this dataset (default: a table per dataset)")
    table.add_argument("--format", choices=["text", "csv", "markdown"], default="text")
    table.add_argument("--all-lrs", action="store_true",
                       help="a row per learning rate instead of the one chosen on --select-split")
    table.add_argument("--select-split", choices=["id_val", "val"], default="id_val",
                       help="validation split the learning rate is chosen on (never a test split)")
    table.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    table.add_argument("--metric", metavar="NAME",
                       help="show this metric (e.g. acc_avg) or calibration figure (ece, nll, brier, their _ts "
                       "after temperature scaling, temperature: evaluate.CALIBRATION) instead of the headline metric")
    table.add_argument("--output-dir", default="outputs/runs")
    table.set_defaults(func=_cmd_table)

    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # bad input: the message says what to fix
        print(f"clipdg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the machine's fault (a full disk, permissions): one line, no traceback
        from .pipeline.oserrors import describe_os_error, out_of_space

        if not isinstance(err, OSError) and not out_of_space(err):  # a full disk in a library's own words too
            raise  # a bug: its traceback
        where = [] if isinstance(err, OSError) else ["."]  # safetensors' "os error 28" names no file
        print(f"clipdg {args.command}: error: {describe_os_error(err, where)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
