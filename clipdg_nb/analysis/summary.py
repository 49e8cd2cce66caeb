"""What experiments' run records say, summed up: the headline table of `clipdg table`
(`experiments_table`), and for the report's summary page per dataset the findings with plain
verdicts (the analysis functions the 04 notebook uses, so the summary and the analysis pages agree;
learning rates chosen on `SELECT_SPLIT`, never on a test split), whether the numbers come from
synthetic data or a tiny model, provenance, and the downloadable results tables.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .. import analysis
from ..data import DATASETS, headline_metric
from ..paths import experiment_dir
from ..runs import RESULT_FILE, is_run_record
from . import figures
from . import weight_averaging as wa
from .tables import headline_table

ID_SPLIT, OOD_SPLIT, SELECT_SPLIT, LEVEL = "id_test", "test", "id_val", 0.95
SPLITS = (ID_SPLIT, OOD_SPLIT)
CLIP_METHOD, VISION_METHOD = "finetune", "vision_only"
TREND_METHODS = ("vision_only", "vision_only_probe")
SYNTHETIC_MARKER = "SYNTHETIC.json"  # what `clipdg synth` writes into each dataset folder (demo.synthetic)
TINY_MODEL_PREFIX = "clipdg-tiny"  # the miniature open_clip configs `clipdg pretrain-tiny` trains
SOUP_STAGE = ("the soups stage (05_model_soups): runs of several learning rates with kept weights, averaged into "
              "uniform and greedy soups")


def experiments_table(output_dir: str | Path, names: Sequence[str], dataset: str | None = None, level: float = 0.95,
                      select_split: str | None = "id_val", metric: str | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """`clipdg table`'s numbers: the experiments `names` under `output_dir` side by side
    (`analysis.compare_experiments`), then each one's soups (`<experiment>/soups`). A name that is an output
    folder of its own (the soups stage's `outputs/runs/soups`) stands for the experiments in it.
    Returns the table, how learning rates were chosen (`tables.format_headline`'s selection) and
    notes for the reader (which experiments a folder stood for)."""
    frames, soups, notes = {}, {}, []
    for name in dict.fromkeys(names):
        folder = experiment_dir(output_dir, name)
        if not folder.is_dir():
            raise FileNotFoundError(f"no runs for experiment={name!r}: {folder} does not exist; run it first "
                                    f"(clipdg run parameters/{name}.yaml)")
        inside = [] if any(folder.glob(f"*/{RESULT_FILE}")) else list(analysis.experiments_with_runs(folder)["experiment"])
        if inside:
            notes.append(f"{folder} is an output folder: its experiment(s) {', '.join(inside)}")
        for label, (out, exp) in ({f"{name}/{e}": (folder, e) for e in inside} or {name: (output_dir, name)}).items():
            frames[label], soups[label] = wa.load_soup_stage(out, exp, dataset, calibration=metric in wa.CALIBRATION_NUMBERS)
            if frames[label].empty and soups[label].empty:
                raise FileNotFoundError(f"no {dataset + ' ' if dataset else ''}runs under {folder}")
    table = analysis.compare_experiments({k: v for k, v in frames.items() if len(v)}, level=level,
                                         select_split=select_split, metric=metric)
    table = pd.concat([table, *(headline_table(s, level=level, column=k, metric=metric).assign(paired=False)
                                for k, s in soups.items() if len(s))], ignore_index=True)
    if table.empty:  # only a metric no record holds
        known = sorted({*wa.CALIBRATION_NUMBERS, *(m for f in [*frames.values(), *soups.values()] for m in f["metric"])})
        raise ValueError(f"--metric {metric!r}: no run of {', '.join(frames)} records it on the ID and OOD "
                         f"test splits; choose one of {', '.join(known)}")
    selection = ("every learning rate" if select_split is None else f"learning rate chosen on {select_split}") + (
        "; soups: their ingredients chosen on validation" if any(len(s) for s in soups.values()) else "")
    return table, selection, notes


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


def experiment_runs(records: list[tuple[dict, Path]]) -> tuple[list[dict], Path | None, int]:
    """Of an experiment's (record, folder) pairs: the run records its analysis reads, the folder of
    its soups stage (None: none) and how many side runs are left out."""
    # the runs in the output folder holding the most of them, as 04_analysis reads {output_dir}/{experiment};
    # side runs (e.g. the SWA ablation's own folder) are kept apart: their run ids may repeat a sweep run's,
    # and mixing them would count one point twice
    runs = [(r, f) for r, f in records if is_run_record(r)]
    folder = Counter(f.parent for _, f in runs).most_common(1)[0][0] if runs else None
    main = [r for r, f in runs if f.parent == folder]
    # the soups stage: the experiment folder holding the most soups (<output_dir>/<experiment>/soups/<soup>)
    stages = Counter(f.parent.parent for r, f in records if r.get("kind") == "soup")
    return main, stages.most_common(1)[0][0] if stages else None, len(runs) - len(main)


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


@dataclass
class DatasetFindings:
    findings: pd.DataFrame  # analysis.FINDING_COLUMNS + topic (study, weight averaging, calibration)
    counts: dict  # runs, seeds, methods, fractions, metrics (the ID and OOD headline metric)
    chosen: pd.DataFrame  # the dataset's tidy runs, learning rate chosen on SELECT_SPLIT
    comparison: pd.DataFrame  # of `averaging_and_calibration`
    gains: pd.DataFrame  # of `averaging_and_calibration`


def dataset_findings(frame: pd.DataFrame, dataset: str, main: list[dict] | None = None,
                     stage: Path | None = None) -> DatasetFindings:
    """The findings (verdicts in words) of one dataset of an experiment and the frames they come
    from. `frame`: the tidy runs its analysis reads (`main`: their records); `stage`: the soups
    stage's experiment folder."""
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
    return DatasetFindings(found, counts, chosen, comparison, gains)


def findings_frame(findings: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """The findings of each (experiment, dataset), long: experiment, dataset, topic, question,
    measured, verdict, value, low, high, n."""
    parts = [frame.drop(columns="holds").assign(experiment=exp, dataset=dataset)
             for (exp, dataset), frame in findings.items() if not frame.empty]
    columns = ["experiment", "dataset", "topic", "question", "measured", "verdict", "value", "low", "high", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


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
