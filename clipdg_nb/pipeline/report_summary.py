"""What the report's summary page says about an experiment: its findings per dataset with plain
verdicts, the key figures with captions saying what to look for, whether the numbers come from
synthetic data or a tiny model, provenance, and the downloadable tables.

Everything is computed from run records (`result.json`) through the analysis functions the 04
notebook uses (`clipdg_nb.analysis`), so the summary and the analysis pages agree; the learning
rate of each method is chosen on `SELECT_SPLIT`, never on a test split.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from markupsafe import Markup

from .. import analysis
from ..analysis import figures, plots
from ..analysis import weight_averaging as wa
from ..analysis.tables import variant_table
from ..data import DATASETS, SPLIT_TITLES, headline_metric
from ..runs import is_run_record, tidy

ID_SPLIT, OOD_SPLIT, SELECT_SPLIT, LEVEL = "id_test", "test", "id_val", 0.95
CLIP_METHOD, VISION_METHOD = "finetune", "vision_only"
TREND_METHODS = ("vision_only", "vision_only_probe")
SYNTHETIC_MARKER = "SYNTHETIC.json"  # what `clipdg synth` writes into each dataset folder (demo.synthetic)
TINY_MODEL_PREFIX = "clipdg-tiny"  # the miniature open_clip configs `clipdg pretrain-tiny` trains
FIGURE_HEIGHT = 430
SWEEP_RUNS = "trained runs with ID and OOD test metrics (the sweep stage, 02_few_shot_sweep)"
SOUP_STAGE = ("the soups stage (05_model_soups): runs of several learning rates with kept weights, averaged into "
              "uniform and greedy soups")
# the questions of the summary, in order: each finding's `topic`
TOPICS = {"study": "", "weight averaging": "Best single run (lr and epoch chosen on ID validation) against SWA, EMA, "
          "WiSE-FT and the uniform and greedy soups of the soups stage, paired by seed",
          "calibration": "Expected calibration error before and after temperature scaling (one temperature fitted on "
          "ID validation per run and weights), paired by seed"}


@dataclass
class Figure:
    title: str
    caption: str
    html: str = ""  # the plotly div + script (plotly.js itself comes once per folder)
    note: str = ""  # why there is no figure, when there is none


@dataclass
class DatasetSummary:
    dataset: str
    findings: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    error: str = ""


# ---------------------------------------------------------------------------------------------
# Which runs, and where they came from
# ---------------------------------------------------------------------------------------------

def main_and_side(records: list[tuple[dict, Path]]) -> tuple[list[dict], list[dict]]:
    """Split an experiment's (record, folder) pairs into the runs its analysis reads (those in the
    output folder holding the most of them: the sweep and zero-shot runs, as 04_analysis reads
    `{output_dir}/{experiment}`) and side runs (e.g. the SWA ablation's own folder), which are kept
    apart: their run ids may repeat a sweep run's, and mixing them would count one point twice."""
    if not records:
        return [], []
    parents = Counter(folder.parent for _, folder in records)
    main = parents.most_common(1)[0][0]
    return ([r for r, f in records if f.parent == main], [r for r, f in records if f.parent != main])


def _distinct(values) -> list:
    return list(dict.fromkeys(v for v in values if v not in (None, "", [], {})))


def data_kind(records: list[dict]) -> dict:
    """Whether the numbers are the study's: the datasets read from a synthetic copy (the marker
    `clipdg synth` leaves in the dataset folder under the run's root_dir) and the tiny models.
    Returns {"synthetic": {dataset: marker path}, "tiny": [model names], "checked": [dataset folders]}."""
    synthetic, checked = {}, []
    for rec in records:
        ds, root = rec.get("dataset"), rec.get("root_dir") or (rec.get("params") or {}).get("root_dir")
        if ds not in DATASETS or not root:
            continue
        folder = Path(root) / DATASETS[ds].folder
        checked.append(str(folder))
        if (folder / SYNTHETIC_MARKER).is_file():
            synthetic.setdefault(ds, str(folder / SYNTHETIC_MARKER))
    models = _distinct((r.get("params") or {}).get("model") for r in records)
    tiny = [m for m in models if str(m).startswith(TINY_MODEL_PREFIX)]
    return {"synthetic": synthetic, "tiny": tiny, "models": models, "checked": _distinct(checked)}


def provenance(records: list[dict]) -> list[tuple[str, str]]:
    """(label, text) rows: commits, library versions, hardware, when the runs were made, data and weights."""
    recs = list(records)
    versions: dict[str, list] = {}
    for rec in recs:
        for k, v in (rec.get("versions") or {}).items():
            versions.setdefault(k, []).append(v)
    dates = sorted(str(r["created_at"]) for r in recs if r.get("created_at"))
    hw = [r.get("hardware") or {} for r in recs]
    gpus = _distinct(h.get("gpu") for h in hw)
    cpus = _distinct(f"{h['cpu']} ({h.get('cpu_count')} cores)" for h in hw if h.get("cpu"))
    if not any(hw):
        device = "not recorded (runs made before records named their hardware)"
    else:
        device = ("GPU: " + ", ".join(gpus) if gpus else "CPU only") + ("; CPU: " + ", ".join(cpus) if cpus else "")
        if any(not h for h in hw):
            device += f" ({sum(not h for h in hw)} run(s) did not record it)"
    params = [r.get("params") or {} for r in recs]
    rows = [("git commit", ", ".join(c[:12] for c in _distinct(r.get("git_commit") for r in recs)) or "not recorded"),
            ("library versions", "; ".join(f"{k} {' / '.join(map(str, _distinct(v)))}" for k, v in versions.items()
                                           if _distinct(v)) or "not recorded"),
            ("hardware", device),
            ("runs made", f"{dates[0]} .. {dates[-1]}" if dates else "not recorded"),
            ("data root", ", ".join(map(str, _distinct(r.get("root_dir") for r in recs))) or "not recorded"),
            ("model", ", ".join(map(str, _distinct(p.get("model") for p in params))) or "not recorded"),
            ("CLIP weights", ", ".join(map(str, _distinct(p.get("pretrained") for p in params))) or "not recorded"),
            ("vision-only weights", ", ".join(map(str, _distinct(p.get("vision_weights") for p in params)))
             or "none")]
    return rows


# ---------------------------------------------------------------------------------------------
# Findings and figures of one dataset
# ---------------------------------------------------------------------------------------------

def _figure(title: str, caption: str, make, needs: str) -> Figure:
    """A figure drawn by `make()` (a plotly figure, or None with nothing to draw), or a note saying
    why not: what it `needs` and which stage makes it."""
    try:
        fig = make()
    except (ValueError, KeyError) as err:  # too few runs of a kind: say so instead of failing the page
        return Figure(title, caption, note=f"not drawn: {err}")
    if fig is None:
        return Figure(title, caption, note=f"not drawn: it needs {needs}")
    # legend under the plot: beside it, long series names ("swa - best, OOD test ...") squeeze the axes
    fig.update_layout(height=FIGURE_HEIGHT, margin=dict(l=60, r=20, t=40, b=20), title=dict(text=title, font_size=14),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font_size=11))
    fig.update_annotations(font_size=11)  # subplot titles: three panels share a card
    return Figure(title, caption, html=Markup(plots.figure_html(fig)))  # plotly's own HTML, kept as it is


def _per_split_gain(table: pd.DataFrame, dataset: str) -> pd.DataFrame | None:
    table = table[table["dataset"] == dataset] if "dataset" in table.columns else table
    if table.empty:
        return None
    label = table["comparison"] + ", " + table["split"].map(lambda s: f"{SPLIT_TITLES.get(s, s)} "
                                                             f"{headline_metric(dataset, s)}")
    return table.assign(comparison=label)


def wise_ft_record(records: list[dict], dataset: str) -> dict | None:
    """The run of `dataset` with the most WiSE-FT variants, the newest of those (the SWA ablation
    draws the curve; a soup stage's runs may carry a single alpha), or None."""
    def alphas(r):
        return sum(figures.wise_alpha(v) is not None for v in (r.get("variants") or {}))
    found = [r for r in records if r.get("dataset") == dataset and alphas(r)]
    return max(found, key=lambda r: (alphas(r), str(r.get("created_at", "")))) if found else None


def soup_stage(records: list[tuple[dict, Path]]) -> Path | None:
    """The experiment folder of the soups stage among (record, folder) pairs: the one holding the
    most soups (`<output_dir>/<experiment>/soups/<soup>`), or None."""
    found = Counter(folder.parent.parent for record, folder in records if record.get("kind") == "soup")
    return found.most_common(1)[0][0] if found else None


def averaging_and_calibration(chosen: pd.DataFrame, main: list[dict], dataset: str, stage: Path | None
                              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`weight_averaging.averaging_comparison` of the soups stage (effective robustness against the
    sweep's vision-only trend) and `calibration_gains` of its weights; without soups stage runs of
    `dataset`, no comparison and the calibration of the sweep's chosen CLIP runs (`main`: its records)."""
    comparison, rows = pd.DataFrame(columns=wa.COMPARISON_COLUMNS), wa.calibration_rows([])
    if stage is not None:
        stage_runs, soups = wa.load_soup_stage(stage.parent, stage.name, dataset)
        fit = analysis.fit_trend(analysis.id_ood_points(chosen, ID_SPLIT, OOD_SPLIT), TREND_METHODS) if len(chosen) else None
        comparison = wa.averaging_comparison(stage_runs, soups, (ID_SPLIT, OOD_SPLIT), CLIP_METHOD, LEVEL, SELECT_SPLIT,
                                             fit=fit)
        rows = wa.averaging_calibration(wa.soup_stage_records(stage.parent, stage.name, dataset), stage_runs,
                                        CLIP_METHOD, SELECT_SPLIT)
    if rows.empty:
        ids = set(chosen.loc[chosen["method"] == CLIP_METHOD, "run_id"])
        rows = wa.calibration_rows([r for r in main if r.get("dataset") == dataset and r.get("run_id") in ids])
    return comparison, wa.calibration_gains(rows, LEVEL, (ID_SPLIT, OOD_SPLIT))


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
    soups stage's experiment folder (`soup_stage`)."""
    runs = frame[frame["dataset"] == dataset].reset_index(drop=True)
    chosen = analysis.apply_selection(runs, analysis.select_lr(runs, SELECT_SPLIT))
    comparison, gains = averaging_and_calibration(chosen, main or [], dataset, stage)
    found = pd.concat([
        analysis.findings(chosen, dataset, ID_SPLIT, OOD_SPLIT, CLIP_METHOD, VISION_METHOD, LEVEL).assign(topic="study"),
        _topic(wa.averaging_findings(comparison, LEVEL, (ID_SPLIT, OOD_SPLIT)), "weight averaging", f"it needs {SOUP_STAGE}"),
        _topic(wa.calibration_findings(gains, LEVEL), "calibration", "it needs runs that record calibration (rerun them)"),
    ], ignore_index=True)
    heads = runs[runs["headline"]].drop_duplicates("run_id")
    counts = {"runs": int(len(heads)), "seeds": int(heads["seed"].nunique()),
              "methods": sorted(map(str, heads["method"].unique())),
              "fractions": sorted(float(f) for f in heads.loc[heads["fraction"] > 0, "fraction"].unique())}  # 0: zero-shot
    interval = f"bars: {LEVEL:.0%} interval over seeds (none with one seed)"

    def curves(split):
        c = analysis.fraction_curves(chosen, split, level=LEVEL)
        if c.empty:
            return None
        zs = analysis.zero_shot_reference(chosen, split).get(dataset)
        metric = headline_metric(dataset, split)
        return figures.metric_vs_fraction(c, {"zero-shot": zs} if zs is not None else None, yaxis_title=metric)

    def clip_minus_vision():
        table = _per_split_gain(analysis.clip_vs_vision(chosen, (ID_SPLIT, OOD_SPLIT), CLIP_METHOD, VISION_METHOD,
                                                        LEVEL), dataset)
        return None if table is None else figures.paired_gain(table, yaxis_title="difference")

    def averaging():
        table = _per_split_gain(analysis.swa_gains(chosen, (ID_SPLIT, OOD_SPLIT), CLIP_METHOD, LEVEL), dataset)
        return None if table is None else figures.paired_gain(table, yaxis_title="difference")

    def robustness():
        points = analysis.id_ood_points(chosen, ID_SPLIT, OOD_SPLIT)
        if points.empty:
            return None
        fit = analysis.fit_trend(points, TREND_METHODS)
        return figures.id_vs_ood(points, fit, xaxis_title=f"{SPLIT_TITLES[ID_SPLIT]}: {headline_metric(dataset, ID_SPLIT)}",
                                 yaxis_title=f"{SPLIT_TITLES[OOD_SPLIT]}: {headline_metric(dataset, OOD_SPLIT)}")

    def wise():
        record = wise_ft_record(records, dataset)
        return None if record is None else figures.wise_ft_curve(variant_table(record))

    def kinds():
        return figures.averaging_gains(comparison) if comparison["diff"].notna().any() else None

    def temperature():
        if gains.empty:
            return None
        fig = figures.averaging_gains(gains)
        fig.update_yaxes(title_text="ECE after - before (paired by seed)", row=1, col=1)
        return fig

    id_metric, ood_metric = headline_metric(dataset, ID_SPLIT), headline_metric(dataset, OOD_SPLIT)
    figs = [
        _figure(f"{SPLIT_TITLES[ID_SPLIT]} {id_metric} against the train fraction",
                "Does more labelled data help, and by how much? Look for each method's line rising to the right and "
                f"where it crosses the dashed zero-shot line; {interval}.", lambda: curves(ID_SPLIT), SWEEP_RUNS),
        _figure(f"{SPLIT_TITLES[OOD_SPLIT]} {ood_metric} against the train fraction",
                "The same runs under distribution shift. Compare with the ID panel: the drop from ID to OOD is what "
                f"the shift costs; a method whose line falls less is more robust; {interval}.",
                lambda: curves(OOD_SPLIT), SWEEP_RUNS),
        _figure("CLIP minus vision-only, paired by seed",
                f"Fine-tuned CLIP ({CLIP_METHOD}) minus the vision-only model ({VISION_METHOD}) trained on the same "
                "subset, on ID and OOD test. Above the zero line: CLIP is better; an interval that crosses zero is "
                "inconclusive. A larger OOD than ID difference means CLIP's advantage grows under shift.",
                clip_minus_vision, f"{CLIP_METHOD} and {VISION_METHOD} runs of the same seeds (the sweep stage, "
                                   "02_few_shot_sweep, with both in `methods`)"),
        _figure("Weight averaging gains (SWA), paired by seed",
                "SWA's averaged weights minus the last epoch and minus the epoch chosen on validation, of the same "
                "training runs. Above zero: averaging helps; intervals crossing zero: no measurable gain.", averaging,
                f"{CLIP_METHOD} runs with SWA weights (the sweep stage with swa: true)"),
        _figure("Effective robustness: OOD against ID, one marker per run",
                "The dashed line is the trend of the vision-only runs (fitted in logit space); markers above it are "
                "more robust than their ID score predicts (positive effective robustness). Dotted: y = x.", robustness,
                SWEEP_RUNS),
        _figure("WiSE-FT: interpolating zero-shot and fine-tuned weights",
                "Each point mixes the zero-shot (α = 0) and the fine-tuned (α = 1) weights of one run. A curve that "
                "bulges above the straight line between its ends buys OOD accuracy without losing ID accuracy; "
                "other markers: the run's best, last, SWA and EMA weights.", wise,
                "a run of this dataset with WiSE-FT variants (the swa_ablation stage, 03_swa_ablation, makes them "
                "with wise_alphas)"),
        _figure("Weight averaging across its kinds, paired by seed",
                "Each kind of averaged weights (SWA, EMA, WiSE-FT, uniform and greedy soups) minus the best single "
                "run of the same seed, on ID and OOD test and in effective robustness (OOD above the vision-only "
                f"trend). Above zero: averaging helps; an interval crossing zero: no measurable gain; {interval}.",
                kinds, SOUP_STAGE),
        _figure("Calibration: ECE after minus before temperature scaling",
                "Temperature scaling divides the logits by one number fitted on ID validation. Below zero: it lowers "
                "the expected calibration error; compare ID with OOD test: a temperature fitted in distribution may "
                f"help less under shift; {interval}.", temperature,
                "runs that record calibration (runs made since calibration was added)"),
    ]
    return DatasetSummary(dataset, found, figs, counts)


def experiment_summaries(records: list[tuple[dict, Path]]) -> dict:
    """The summary of one experiment's (record, folder) pairs: per dataset findings and figures,
    data kind (synthetic / tiny), provenance. A dataset whose analysis fails gets its error shown
    (and warned), not a blank section."""
    main, side = main_and_side([(r, f) for r, f in records if is_run_record(r)])
    frame = tidy(main) if main else None
    all_records, stage = [r for r, _ in records], soup_stage(records)
    datasets = []
    for ds in sorted({r.get("dataset") for r in main if r.get("dataset") in DATASETS}):
        try:
            datasets.append(dataset_summary(frame, all_records, ds, main, stage))
        except Exception as err:  # noqa: BLE001 -- shown on the page and warned, never silent
            warnings.warn(f"report summary of {ds}: {type(err).__name__}: {err}", stacklevel=2)
            datasets.append(DatasetSummary(ds, pd.DataFrame(), error=f"{type(err).__name__}: {err}"))
    return {"datasets": datasets, "kind": data_kind(all_records), "provenance": provenance(all_records),
            "n_runs": len(main), "n_side": len(side)}


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------

def findings_frame(summaries: dict[str, dict]) -> pd.DataFrame:
    """Every experiment's findings, long: experiment, dataset, topic, question, measured, verdict, value, low, high, n."""
    parts = [s.findings.drop(columns="holds").assign(experiment=exp, dataset=s.dataset)
             for exp, summary in summaries.items() for s in summary["datasets"] if not s.findings.empty]
    columns = ["experiment", "dataset", "topic", "question", "measured", "verdict", "value", "low", "high", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


DOWNLOADS = {"runs": "one row per run and soup: its folder (run_dir, the key of the other tables), kind, method, "
                     "fraction, seed, lr, the reported weights and how they were chosen, every parameter, a soup's "
                     "ingredients",
             "metrics": "long: run_dir, variant (weights), split, metric, value: every metric of every run's and "
                        "soup's weights",
             "calibration": "run_dir, variant, split: ECE and NLL before and after temperature scaling, the "
                            "temperature and the split it was fitted on",
             "findings": "per experiment and dataset, each question with its measured number, interval and verdict"}


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    """`frame` as Parquet; a column mixing numbers and text (a parameter given both ways) becomes text."""
    import io

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


def results_tables(records: Sequence[Mapping], run_dirs: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The downloadable results, keyed by `run_dir` (each record's folder as given: two output folders
    may hold runs of one id, e.g. an ablation beside a sweep), run and soup records alike:
    runs: one row per record: run_dir, kind (run | soup), the run's keys, the reported variant and
    its selection, RESULT_FIELDS, each `params` entry and a soup's ingredients (lists and dicts as
    JSON text, so a cell holds one value); metrics: long, run_dir, variant, split, metric, value;
    calibration: `weight_averaging.calibration_rows` with run_dir (every figure of
    `evaluate.CALIBRATION` before and after temperature scaling, the temperature)."""
    import json

    def text(value):
        return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value

    pairs = [(r, str(d)) for r, d in zip(records, run_dirs, strict=True) if is_run_record(r)]
    runs, metrics, calibration = [], [], []
    for rec, run_dir in pairs:
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
        calibration.append(wa.calibration_rows([rec]).drop(columns=["dataset", "method", "fraction", "seed", "lr", "kind"])
                           .assign(run_dir=run_dir))
    columns = ["run_dir", "run_id", "variant", "headline", "split", *wa.CALIBRATION_NUMBERS, "temperature_split"]
    return {"runs": pd.DataFrame(runs),
            "metrics": pd.DataFrame(metrics, columns=["run_dir", "variant", "split", "metric", "value"]).astype({"value": float}),
            "calibration": pd.concat(calibration, ignore_index=True)[columns] if calibration else pd.DataFrame(columns=columns)}


def write_downloads(out_dir: Path, records: list[dict], run_dirs: list[str], findings: pd.DataFrame) -> dict[str, dict]:
    """Each table of `results_tables` and the findings as `<name>.parquet` and `<name>.csv.gz`
    in `out_dir` (written atomically): compact (a runs table once, metrics long, keyed by run_dir)
    and read by pandas, R and spreadsheets alike. Returns {name: {"files", "rows", "columns", "size", "what"}}."""
    import gzip

    from ..paths import write_bytes

    out = {}
    for name, frame in {**results_tables(records, run_dirs), "findings": findings}.items():
        files = {f"{name}.parquet": _parquet_bytes(frame),
                 f"{name}.csv.gz": gzip.compress(frame.to_csv(index=False).encode("utf-8"), mtime=0)}
        for file, data in files.items():
            write_bytes(out_dir / file, data)
        out[name] = {"files": list(files), "rows": int(len(frame)), "columns": int(frame.shape[1]),
                     "column_names": list(map(str, frame.columns)), "what": DOWNLOADS[name],
                     "size": sum(map(len, files.values()))}
    return out
