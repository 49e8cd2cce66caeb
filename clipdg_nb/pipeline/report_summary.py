"""What the report's summary page says about an experiment: its findings per dataset with plain
verdicts, the key figures (titles and captions in templates/summary.html.j2), whether the numbers
come from synthetic data or a tiny model, provenance, and the downloadable tables. All of it comes
from run records through the analysis functions the 04 notebook uses (`clipdg_nb.analysis`), so the
summary and the analysis pages agree; learning rates are chosen on `SELECT_SPLIT`, never on a test split.
"""
from __future__ import annotations

import gzip
import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from .. import analysis
from ..analysis import figures, plots
from ..analysis import weight_averaging as wa
from ..analysis.tables import variant_table
from ..data import DATASETS, SPLIT_TITLES, headline_metric
from ..paths import write_bytes
from ..runs import is_run_record, tidy

ID_SPLIT, OOD_SPLIT, SELECT_SPLIT, LEVEL = "id_test", "test", "id_val", 0.95
SPLITS = (ID_SPLIT, OOD_SPLIT)
CLIP_METHOD, VISION_METHOD = "finetune", "vision_only"
TREND_METHODS = ("vision_only", "vision_only_probe")
SYNTHETIC_MARKER = "SYNTHETIC.json"  # what `clipdg synth` writes into each dataset folder (demo.synthetic)
TINY_MODEL_PREFIX = "clipdg-tiny"  # the miniature open_clip configs `clipdg pretrain-tiny` trains
SOUP_STAGE = ("the soups stage (05_model_soups): runs of several learning rates with kept weights, averaged into "
              "uniform and greedy soups")


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


def distinct(values) -> list:
    return list(dict.fromkeys(v for v in values if v not in (None, "", [], {})))


def data_kind(records: list[dict]) -> dict:
    """Whether the numbers are the study's: {"synthetic": {dataset: marker path}} for datasets read
    from a copy `clipdg synth` wrote (its marker in the dataset folder under the run's root_dir),
    and "tiny": the tiny models the runs used."""
    synthetic = {}
    for rec in records:
        ds, root = rec.get("dataset"), rec.get("root_dir") or (rec.get("params") or {}).get("root_dir")
        if ds in DATASETS and root and (Path(root) / DATASETS[ds].folder / SYNTHETIC_MARKER).is_file():
            synthetic.setdefault(ds, str(Path(root) / DATASETS[ds].folder / SYNTHETIC_MARKER))
    models = distinct((r.get("params") or {}).get("model") for r in records)
    return {"synthetic": synthetic, "tiny": [m for m in models if str(m).startswith(TINY_MODEL_PREFIX)]}


def provenance(records: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, distinct values) rows of where runs came from: commits, library versions, hardware,
    when they were made, data and weights (an empty list: no record says)."""
    versions: dict[str, list] = {}
    for rec in records:
        for k, v in (rec.get("versions") or {}).items():
            versions.setdefault(k, []).append(v)
    dates = sorted(str(r["created_at"]) for r in records if r.get("created_at"))
    hw = [r.get("hardware") or {} for r in records]
    device = []
    if any(hw):
        gpus = distinct(h.get("gpu") for h in hw)
        cpus = distinct(f"{h['cpu']} ({h.get('cpu_count')} cores)" for h in hw if h.get("cpu"))
        device = [("GPU: " + ", ".join(gpus) if gpus else "CPU only") + ("; CPU: " + ", ".join(cpus) if cpus else "")
                  + (f" ({sum(not h for h in hw)} run(s) did not record it)" if not all(hw) else "")]
    params = [r.get("params") or {} for r in records]
    return [("git commit", distinct(r.get("git_commit") for r in records)),
            ("library versions", [f"{k} {' / '.join(map(str, distinct(v)))}" for k, v in versions.items() if distinct(v)]),
            ("hardware", device), ("runs made", [f"{dates[0]} .. {dates[-1]}"] if dates else []),
            ("data root", distinct(r.get("root_dir") or p.get("root_dir") for r, p in zip(records, params, strict=True))),
            *((label, list(map(str, distinct(p.get(key) for p in params)))) for label, key in (
                ("model", "model"), ("CLIP weights", "pretrained"), ("vision-only model", "vision_arch"),
                ("vision-only weights", "vision_weights")))]


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


def wise_ft_record(records: list[dict], dataset: str) -> dict | None:
    """The run of `dataset` with the most WiSE-FT variants, the newest of those (the SWA ablation
    draws the curve; a soup stage's runs may carry a single alpha), or None."""
    def alphas(r):
        return sum(figures.wise_alpha(v) is not None for v in (r.get("variants") or {}))
    found = [r for r in records if r.get("dataset") == dataset and alphas(r)]
    return max(found, key=lambda r: (alphas(r), str(r.get("created_at", "")))) if found else None


def averaging_and_calibration(chosen: pd.DataFrame, main: list[dict], dataset: str, stage: Path | None
                              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`weight_averaging.averaging_comparison` of the soups stage (`stage`: its experiment folder;
    effective robustness against the sweep's vision-only trend) and `calibration_gains` of its
    weights; without soups stage runs of `dataset`, no comparison and the calibration of the sweep's
    chosen CLIP runs (`main`: its records)."""
    comparison, rows = pd.DataFrame(columns=wa.COMPARISON_COLUMNS), wa.calibration_rows([])
    if stage is not None:
        stage_runs, soups = wa.load_soup_stage(stage.parent, stage.name, dataset)
        fit = analysis.fit_trend(analysis.id_ood_points(chosen, *SPLITS), TREND_METHODS) if len(chosen) else None
        comparison = wa.averaging_comparison(stage_runs, soups, SPLITS, CLIP_METHOD, LEVEL, SELECT_SPLIT, fit=fit)
        rows = wa.averaging_calibration(wa.soup_stage_records(stage.parent, stage.name, dataset), stage_runs,
                                        CLIP_METHOD, SELECT_SPLIT)
    if rows.empty:
        ids = set(chosen.loc[chosen["method"] == CLIP_METHOD, "run_id"])
        rows = wa.calibration_rows([r for r in main if r.get("dataset") == dataset and r.get("run_id") in ids])
    return comparison, wa.calibration_gains(rows, LEVEL, SPLITS)


def _topic(frame: pd.DataFrame, topic: str, missing: str) -> pd.DataFrame:
    if frame.empty:
        frame = analysis.finding_frame([{"question": f"{topic}: {missing}", "measured": "runs missing", "holds": None,
                                         "verdict": analysis.verdict(None, measured=False)}])
    return frame.assign(topic=topic)


def dataset_summary(frame: pd.DataFrame, records: list[dict], dataset: str, main: list[dict] | None = None,
                    stage: Path | None = None) -> DatasetSummary:
    """Findings (verdicts in words) and the key figures of one dataset of an experiment. `frame`:
    the tidy runs its analysis reads (`main`: their records); `records`: every run record of the
    experiment (the WiSE-FT curve may come from a side run, e.g. the SWA ablation's); `stage`: the
    soups stage's experiment folder."""
    runs = frame[frame["dataset"] == dataset].reset_index(drop=True)
    chosen = analysis.apply_selection(runs, analysis.select_lr(runs, SELECT_SPLIT))
    comparison, gains = averaging_and_calibration(chosen, main or [], dataset, stage)
    found = pd.concat([
        analysis.findings(chosen, dataset, *SPLITS, CLIP_METHOD, VISION_METHOD, LEVEL).assign(topic="study"),
        _topic(wa.averaging_findings(comparison, LEVEL, SPLITS), "weight averaging", f"it needs {SOUP_STAGE}"),
        _topic(wa.calibration_findings(gains, LEVEL), "calibration", "it needs runs that record calibration (rerun them)"),
    ], ignore_index=True)
    heads = runs[runs["headline"]].drop_duplicates("run_id")
    counts = {"runs": int(len(heads)), "seeds": int(heads["seed"].nunique()),
              "methods": sorted(map(str, heads["method"].unique())),
              "fractions": sorted(float(f) for f in heads.loc[heads["fraction"] > 0, "fraction"].unique()),  # 0: zero-shot
              "metrics": [headline_metric(dataset, s) for s in SPLITS]}

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
    return DatasetSummary(dataset, found, figs, counts)


def experiment_summaries(records: list[tuple[dict, Path]]) -> dict:
    """The summary of one experiment's (record, folder) pairs: per dataset findings and figures,
    data kind (synthetic / tiny), provenance. A dataset whose analysis fails gets its error shown
    (and warned), not a blank section."""
    # the runs its analysis reads: those in the output folder holding the most of them, as 04_analysis reads
    # {output_dir}/{experiment}; side runs (e.g. the SWA ablation's own folder) are kept apart: their run ids
    # may repeat a sweep run's, and mixing them would count one point twice
    runs = [(r, f) for r, f in records if is_run_record(r)]
    folder = Counter(f.parent for _, f in runs).most_common(1)[0][0] if runs else None
    main = [r for r, f in runs if f.parent == folder]
    frame = tidy(main) if main else None
    # the soups stage: the experiment folder holding the most soups (<output_dir>/<experiment>/soups/<soup>)
    stages = Counter(folder.parent.parent for record, folder in records if record.get("kind") == "soup")
    stage = stages.most_common(1)[0][0] if stages else None
    datasets = []
    for ds in sorted({r.get("dataset") for r in main if r.get("dataset") in DATASETS}):
        try:
            datasets.append(dataset_summary(frame, [r for r, _ in records], ds, main, stage))
        except Exception as err:  # noqa: BLE001 -- shown on the page and warned, never silent
            warnings.warn(f"report summary of {ds}: {type(err).__name__}: {err}", stacklevel=2)
            datasets.append(DatasetSummary(ds, pd.DataFrame(), error=f"{type(err).__name__}: {err}"))
    return {"datasets": datasets, "kind": data_kind([r for r, _ in records]),
            "provenance": provenance([r for r, _ in records]), "n_runs": len(main), "n_side": len(runs) - len(main)}


def findings_frame(summaries: dict[str, dict]) -> pd.DataFrame:
    """Every experiment's findings, long: experiment, dataset, topic, question, measured, verdict, value, low, high, n."""
    parts = [s.findings.drop(columns="holds").assign(experiment=exp, dataset=s.dataset)
             for exp, summary in summaries.items() for s in summary["datasets"] if not s.findings.empty]
    columns = ["experiment", "dataset", "topic", "question", "measured", "verdict", "value", "low", "high", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


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


RESULT_FIELDS = ("root_dir", "weights", "n_train", "git_commit", "created_at")


def results_tables(records: list[dict], run_dirs: list[str]) -> dict[str, pd.DataFrame]:
    """The downloadable results of run and soup records, keyed by `run_dir` (each record's folder:
    two output folders may hold runs of one id, e.g. an ablation beside a sweep). runs: a row per
    record: run_dir, kind, its keys, the reported variant and its selection, RESULT_FIELDS, each
    `params` entry and a soup's ingredients (lists and dicts as JSON text: a cell holds one value);
    metrics: long, run_dir, variant, split, metric, value; calibration: `calibration_rows` by run_dir."""
    def text(value):
        return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value

    runs, metrics, calibration = [], [], []
    for rec, run_dir in ((r, str(d)) for r, d in zip(records, run_dirs, strict=True) if is_run_record(r)):
        selection = rec.get("selection") or {}
        row = {"run_dir": run_dir, "kind": rec.get("kind", "run"),
               **{k: rec.get(k) for k in ("run_id", "experiment", "dataset", "method", "fraction", "seed", "lr")},
               "variant": selection.get("variant"), "select_split": selection.get("split"),
               "select_metric": selection.get("metric"), **{k: text(rec.get(k)) for k in RESULT_FIELDS}}
        if rec.get("soups"):
            row["soups"] = text({k: v.get("ingredients") for k, v in rec["soups"].items()})
        for key, value in (rec.get("params") or {}).items():
            row.setdefault(key, text(value))
        runs.append(row)
        for variant, table in (rec.get("variants") or {selection.get("variant"): rec["metrics"]}).items():
            metrics += [(run_dir, variant, split, name, value) for split, values in table.items()
                        for name, value in values.items() if isinstance(value, (int, float))]
        calibration.append(wa.calibration_rows([rec]).assign(run_dir=run_dir))
    columns = ["run_dir", "run_id", "variant", "headline", "split", *wa.CALIBRATION_NUMBERS, "temperature_split"]
    return {"runs": pd.DataFrame(runs),
            "metrics": pd.DataFrame(metrics, columns=["run_dir", "variant", "split", "metric", "value"]).astype({"value": float}),
            "calibration": pd.concat(calibration, ignore_index=True)[columns] if calibration else pd.DataFrame(columns=columns)}


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
