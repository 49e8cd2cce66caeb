"""`clipdg`: the command line. Each subcommand is a thin call into the library."""
from __future__ import annotations

import argparse
import sys
import time


def _cmd_synth(args) -> int:
    from .data import load_dataset
    from .summary import format_summary
    from .synthetic import SynthConfig, write_synthetic

    cfg = SynthConfig(seed=args.seed, image_size=args.image_size, shift=args.shift,
                      mixed_timestamps=args.mixed_timestamps)
    start = time.perf_counter()
    folders = write_synthetic(args.root, datasets=args.datasets, cfg=cfg, overwrite=args.overwrite)
    print(f"synthetic WILDS data under {args.root} ({time.perf_counter() - start:.1f} s)")
    for name in folders:
        print(format_summary(name, load_dataset(name, args.root)), end="\n\n")
    return 0


def _cmd_summary(args) -> int:
    from .data import load_dataset
    from .summary import format_summary

    for name in args.datasets:
        print(format_summary(name, load_dataset(name, args.root)), end="\n\n")
    return 0


def _cmd_demo(args) -> int:
    """The offline default: synthetic data in the WILDS formats, then a summary of every split."""
    return _cmd_synth(argparse.Namespace(root=args.root, datasets=["fmow", "iwildcam"], seed=0, image_size=32,
                                         shift=1.0, mixed_timestamps=False, overwrite=False))


def _cmd_run(args) -> int:
    """Run (or plan, or write Slurm scripts for) the stages of an experiment file."""
    from .sweep import load_experiment, run_experiment, write_slurm

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


def _cmd_report(args) -> int:
    """Render executed notebooks to self-contained HTML under outputs/reports/."""
    from .report import render_reports

    written = render_reports(args.notebooks, args.out, experiment=args.experiment, stage=args.stage,
                             no_code=args.no_code)
    for path in written:
        print(path)
    print(f"{len(written)} report(s) in {args.out}")
    return 0 if written else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write small synthetic datasets in the WILDS on-disk formats")
    synth.add_argument("--root", default="outputs/data", help="folder that will hold fmow_v1.1/ and iwildcam_v2.0/")
    synth.add_argument("--datasets", nargs="+", default=["fmow", "iwildcam"], choices=["fmow", "iwildcam"])
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=32, help="pixels; 224 for real ViT-B/32 runs")
    synth.add_argument("--shift", type=float, default=1.0, help="strength of the domain shift (0 = none)")
    synth.add_argument("--mixed-timestamps", action="store_true",
                       help="write FMoW's real mix of ISO-8601 timestamp forms (exercises the pandas>=2 shim)")
    synth.add_argument("--overwrite", action="store_true", help="rewrite even if an identical copy exists")
    synth.set_defaults(func=_cmd_synth)

    summary = sub.add_parser("summary", help="print what each split of a WILDS folder holds")
    summary.add_argument("--root", default="outputs/data")
    summary.add_argument("--datasets", nargs="+", default=["fmow", "iwildcam"], choices=["fmow", "iwildcam"])
    summary.set_defaults(func=_cmd_summary)
    demo = sub.add_parser("demo", help="run the offline default end to end (synthetic data, tiny model)")
    demo.add_argument("--root", default="outputs/data")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="execute the stages of an experiment file (parameters/*.yaml) with papermill")
    run.add_argument("experiment", help="experiment YAML, e.g. parameters/demo.yaml")
    run.add_argument("--jobs", "-j", type=int, default=1, help="points run at once (one per GPU when GPUs are visible)")
    run.add_argument("--only", action="append", metavar="STAGE",
                     help="run only this stage (repeat, or comma-separate, for several)")
    run.add_argument("--dry-run", action="store_true", help="print the points that would run; execute nothing")
    run.add_argument("--force", action="store_true", help="rerun points (and runs) that are already done")
    run.add_argument("--slurm", action="store_true", help="write Slurm job-array scripts to outputs/slurm/ instead")
    run.add_argument("--root", default=".", help="repository root: notebooks, outputs and the kernels' working folder")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="render executed notebooks to self-contained HTML (outputs/reports/)")
    report.add_argument("--experiment", help="only this experiment's notebooks")
    report.add_argument("--stage", help="only this stage's notebooks")
    report.add_argument("--no-code", action="store_true", help="hide code cells (narrative, tables and figures only)")
    report.add_argument("--notebooks", default="outputs/notebooks", help="folder of executed notebooks")
    report.add_argument("--out", default="outputs/reports", help="folder for the HTML files")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"clipdg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
