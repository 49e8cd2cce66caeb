"""The report's summary page of an experiment: per dataset its findings and the key figures (titles
and captions in templates/summary.html.j2), data kind and provenance, and the downloadable tables.
What the records say comes from `analysis.summary`, so the summary and the 04 notebook agree.
"""
from __future__ import annotations

import gzip
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from .. import analysis
from ..analysis import figures, plots
from ..analysis.summary import (CLIP_METHOD, ID_SPLIT, LEVEL, OOD_SPLIT, SPLITS, TREND_METHODS, VISION_METHOD,
                                data_kind, dataset_findings, experiment_runs, provenance, results_tables, wise_ft_record)
from ..analysis.tables import variant_table
from ..data import DATASETS, SPLIT_TITLES, headline_metric
from ..paths import write_bytes
from ..runs import tidy


@dataclass
class Figure:
    name: str  # its title and caption in templates/summary.html.j2
    html: str = ""  # the plotly div + script (plotly.js itself comes once per folder)
    error: str = ""  # why it was not drawn, when drawing failed; no html and no error: the runs it needs are missing


@dataclass
class DatasetSummary:
    dataset: str
    findings: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    error: str = ""


def _figure(name: str, make) -> Figure:
    """The figure `make()` draws (None: the runs it needs are missing), or why it was not drawn."""
    try:
        fig = make()
    except (ValueError, KeyError) as err:  # too few runs of a kind: say so instead of failing the page
        return Figure(name, error=str(err))
    if fig is None:
        return Figure(name)
    # legend under the plot: beside it, long series names ("swa - best, OOD test ...") squeeze the axes
    fig.update_layout(height=430, margin=dict(l=60, r=20, t=20, b=20), title=None,
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font_size=11))
    fig.update_annotations(font_size=11)  # subplot titles: three panels share a card
    return Figure(name, html=Markup(plots.figure_html(fig)))  # plotly's own HTML, kept as it is


def _per_split_gain(table: pd.DataFrame, dataset: str):
    """A paired-gain figure of one dataset's rows, each labelled with its split and metric."""
    table = table[table["dataset"] == dataset] if "dataset" in table.columns else table
    if table.empty:
        return None
    label = table["split"].map(lambda s: f"{SPLIT_TITLES.get(s, s)} {headline_metric(dataset, s)}")
    return figures.paired_gain(table.assign(comparison=table["comparison"] + ", " + label), yaxis_title="difference")


def dataset_summary(frame: pd.DataFrame, records: list[dict], dataset: str, main: list[dict] | None = None,
                    stage: Path | None = None) -> DatasetSummary:
    """The findings (`summary.dataset_findings`) and the key figures of one dataset of an experiment;
    `records`: every run record of the experiment (the WiSE-FT curve may come from a side run, e.g.
    the SWA ablation's)."""
    found = dataset_findings(frame, dataset, main, stage)
    chosen, comparison, gains = found.chosen, found.comparison, found.gains

    def curves(split):
        c = analysis.fraction_curves(chosen, split, level=LEVEL)
        zs = analysis.zero_shot_reference(chosen, split).get(dataset)
        return None if c.empty else figures.metric_vs_fraction(c, {"zero-shot": zs} if zs is not None else None,
                                                                 yaxis_title=headline_metric(dataset, split))

    def robustness():
        points = analysis.id_ood_points(chosen, *SPLITS)
        return None if points.empty else figures.id_vs_ood(
            points, analysis.fit_trend(points, TREND_METHODS),
            **{f"{axis}axis_title": f"{SPLIT_TITLES[s]}: {headline_metric(dataset, s)}" for axis, s in zip("xy", SPLITS)})

    def temperature():
        if gains.empty:
            return None
        return figures.averaging_gains(gains).update_yaxes(title_text="ECE after - before (paired by seed)", row=1, col=1)

    wise = wise_ft_record(records, dataset)
    figs = [_figure(name, make) for name, make in {
        "id_curve": lambda: curves(ID_SPLIT), "ood_curve": lambda: curves(OOD_SPLIT),
        "clip_minus_vision": lambda: _per_split_gain(analysis.clip_vs_vision(chosen, SPLITS, CLIP_METHOD, VISION_METHOD,
                                                                             LEVEL), dataset),
        "swa": lambda: _per_split_gain(analysis.swa_gains(chosen, SPLITS, CLIP_METHOD, LEVEL), dataset),
        "robustness": robustness, "wise": lambda: wise and figures.wise_ft_curve(variant_table(wise)),
        "averaging": lambda: figures.averaging_gains(comparison) if comparison["diff"].notna().any() else None,
        "calibration": temperature}.items()]
    return DatasetSummary(dataset, found.findings, figs, found.counts)


def experiment_summaries(records: list[tuple[dict, Path]]) -> dict:
    """The summary of one experiment's (record, folder) pairs: per dataset findings and figures,
    data kind (synthetic / tiny), provenance. A dataset whose analysis fails gets its error shown
    (and warned), not a blank section."""
    main, stage, n_side = experiment_runs(records)
    frame = tidy(main) if main else None
    datasets = []
    for ds in sorted({r.get("dataset") for r in main if r.get("dataset") in DATASETS}):
        try:
            datasets.append(dataset_summary(frame, [r for r, _ in records], ds, main, stage))
        except Exception as err:  # noqa: BLE001 -- shown on the page and warned, never silent
            warnings.warn(f"report summary of {ds}: {type(err).__name__}: {err}", stacklevel=2)
            datasets.append(DatasetSummary(ds, pd.DataFrame(), error=f"{type(err).__name__}: {err}"))
    return {"datasets": datasets, "kind": data_kind([r for r, _ in records]),
            "provenance": provenance([r for r, _ in records]), "n_runs": len(main), "n_side": n_side}


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    """`frame` as Parquet; a column mixing numbers and text (a parameter given both ways) becomes text."""
    import pyarrow as pa

    fixed = {}
    for column in frame.select_dtypes(include="object").columns:
        try:
            pa.array(frame[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            fixed[column] = frame[column].map(lambda v: v if v is None else str(v))
    buffer = io.BytesIO()
    frame.assign(**fixed).to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_downloads(out_dir: Path, records: list[dict], run_dirs: list[str], findings: pd.DataFrame) -> list[dict]:
    """Each table of `results_tables` and the findings as `<name>.parquet` and `<name>.csv.gz` in
    `out_dir`: compact (a runs table once, metrics long, keyed by run_dir) and read by pandas, R and
    spreadsheets alike. Returns per table: name, files, rows, column_names, size."""
    out = []
    for name, frame in {**results_tables(records, run_dirs), "findings": findings}.items():
        files = {f"{name}.parquet": _parquet_bytes(frame),
                 f"{name}.csv.gz": gzip.compress(frame.to_csv(index=False).encode("utf-8"), mtime=0)}
        for file, data in files.items():
            write_bytes(out_dir / file, data)
        out.append({"name": name, "files": list(files), "rows": len(frame), "column_names": list(map(str, frame.columns)),
                    "size": sum(map(len, files.values()))})
    return out
