"""What every point pays around its science: papermill's default kernel vs the runner's, in one run.

    python benchmarks/bench_point_overhead.py      # a notebook that imports torch and open_clip, 6 points each way

Both start a new `python -m ipykernel_launcher` per point, which imports the libraries itself;
(a) papermill's defaults: TCP sockets, a graceful shutdown (interrupt, shutdown request, then
    SIGTERM after 2.5 s when the kernel has not ended);
(b) the runner's (`point.kernel_options`, public papermill/nbclient options only): IPC sockets and
    `shutdown_kernel="immediate"`.
The notebook is the runner's minimum: a parameters cell and one that imports what the study's
notebooks import. The ways alternate point by point; the stage times come from papermill's
timestamps (`point.stage_times`, as in every `<point>.done.json`). Prints the median kernel start,
imports and kernel shutdown of each way, and the ratio of the points' total time.
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
from _common import machine, parse_args  # noqa: E402

IMPORTS = "import torch, open_clip, pandas\nfrom clipdg_nb import methods"


def notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("x = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(IMPORTS), nbformat.v4.new_code_cell("print(x)")]
    nbformat.write(nb, str(path))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=6, help="points executed each way")
    args = parse_args(p, argv, points=2)

    import papermill

    from clipdg_nb.pipeline.point import kernel_options, stage_times

    print(f"machine: {machine()}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the runner's kernels' setting (point.KERNEL_THREADS)
    ways = {"papermill's default kernel": lambda sockets: {}, "the runner's kernel": kernel_options}
    times: dict = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        source = notebook(Path(tmp) / "point.ipynb")
        for i in range(args.points):
            for name, options in ways.items():
                with tempfile.TemporaryDirectory(prefix="clipdg-kernel-") as sockets:
                    t = time.perf_counter()
                    out = papermill.execute_notebook(str(source), str(Path(tmp) / "out.ipynb"), parameters={"x": i},
                                                     kernel_name="python3", progress_bar=False, **options(sockets))
                    times[name].append(stage_times(out, (), time.perf_counter() - t))
    print(f"{args.points} points each way, a notebook that imports torch, open_clip, pandas and clipdg_nb; "
          "median seconds per point")
    median = {name: {k: statistics.median(t[k] for t in ts) for k in ("kernel_start_s", "imports_s", "kernel_end_s",
                                                                       "total_s")} for name, ts in times.items()}
    for name, m in median.items():
        print(f"  {name:28s} kernel start {m['kernel_start_s']:5.2f}, imports {m['imports_s']:5.2f}, "
              f"kernel shutdown {m['kernel_end_s']:5.2f}, total {m['total_s']:5.2f}")
    default, ours = median.values()
    print(f"RATIO point overhead, papermill's default / the runner's kernel: {default['total_s'] / ours['total_s']:.1f}x "
          f"(kernel start {default['kernel_start_s'] / ours['kernel_start_s']:.1f}x, shutdown "
          f"{default['kernel_end_s'] / max(ours['kernel_end_s'], 1e-3):.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
