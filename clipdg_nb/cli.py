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
