"""Weight averaging compared across its kinds, and calibration: pure functions over run records.

`averaging_comparison` puts side by side, per seed and paired by seed, the best single run of the
soup stage (learning rate and epoch chosen on validation), its last epoch, its SWA / EMA / WiSE-FT
weights where made, and the uniform and greedy soups (`clipdg_nb.soups`), each with its effective
robustness. `calibration_table` reads `evaluate.CALIBRATION` before and after temperature scaling;
`reliability_bins` computes a reliability diagram from saved predictions.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import paths, runs
from ..evaluate import CALIBRATION, CALIBRATION_BINS, CALIBRATION_FIELDS, confidence_bins
from ..soups import load_soups
from . import stats

BASELINE = "best"  # the best single run: lr and epoch chosen on validation (plain fine-tuning)
SOUPS = ("uniform_soup", "greedy_soup")
COMPARISON_COLUMNS = ["dataset", "method", "fraction", "variant", "split", "metric", "mean", "low", "high", "n",
                      "diff", "diff_low", "diff_high", "n_paired"]
CALIBRATION_NUMBERS = (*CALIBRATION_FIELDS, "temperature")  # the figures of evaluate.CALIBRATION, then T


def variant_order(variants) -> list[str]:
    """best, last, swa, ema, wise_ft_* (by alpha), other averages, then the soups."""
    rank = {"best": 0, "last": 1, "swa": 2, "ema": 3, "uniform_soup": 8, "greedy_soup": 9}

    def key(v):
        wise = str(v).startswith("wise_ft_")
        return (rank.get(v, 5 if wise else 6), float(str(v)[8:]) if wise else 0.0, str(v))
    return sorted(dict.fromkeys(variants), key=key)


def variant_label(variant: str) -> str:
    """A weight variant in a sentence: 'best single run', 'SWA', 'WiSE-FT α=0.5', 'greedy soup'."""
    from .figures import variant_title
    return "best single run" if variant == BASELINE else variant_title(variant)


def load_soup_stage(output_dir: str | Path, experiment: str, dataset: str | None = None,
                    calibration: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ingredient runs, current soups) of the soup stage (`soup_stage_records`) as tidy frames, empty if none. A
    soup's `setting` is cleared: its ingredients differ by seed by design, not by a setting that splits methods.
    `calibration`: with the calibration figures as metric rows (`with_calibration`)."""
    records = soup_stage_records(output_dir, experiment, dataset)
    trained, soups = ([r for r in records if (r.get("kind") == "soup") is soup] for soup in (False, True))
    frames = runs.split_settings(runs.tidy(trained)), runs.tidy(soups).assign(setting="")
    if calibration:
        frames = tuple(with_calibration(frame, recs) for frame, recs in zip(frames, (trained, soups)))
    return frames


def with_calibration(df: pd.DataFrame, records: Sequence[Mapping]) -> pd.DataFrame:
    """`df` (the tidy rows of `records`) plus, per (run, weight variant, split), a row per figure of
    CALIBRATION_NUMBERS (metric 'ece', 'ece_ts', ..., 'temperature'), from `calibration_rows`: so
    any table of metrics (`tables.headline_table`) shows a calibration figure as it shows a metric."""
    cal = calibration_rows(records)
    if df.empty or cal.empty:
        return df
    long = cal.melt(id_vars=["run_id", "variant", "split"], value_vars=list(CALIBRATION_NUMBERS),
                    var_name="metric", value_name="value")
    base = df.drop(columns=["metric", "value"]).drop_duplicates(["run_id", "variant", "split"])
    return pd.concat([df, base.merge(long, on=["run_id", "variant", "split"])], ignore_index=True)


def averaging_comparison(runs_df: pd.DataFrame, soups_df: pd.DataFrame, splits: Sequence[str] = ("id_test", "test"),
                         method: str = "finetune", level: float = 0.95, select_split: str = "id_val",
                         fit: Mapping | None = None, id_split: str | None = None,
                         ood_split: str | None = None) -> pd.DataFrame:
    """Every weight-averaging variant of the soup stage against the best single run, per (dataset,
    fraction) and split: mean and `level` interval over seeds of the split's headline metric, and
    the difference to the best single run (`best` of the lr chosen on `select_split`) paired by seed
    (`analysis.paired_table`). Variants: those of the chosen runs (best, last, swa, ema, wise_ft_*)
    and the soups of `soups_df`. With a trend `fit` (`analysis.fit_trend`), rows of split
    'effective_robustness' add each variant's OOD minus the trend's prediction at its ID value
    (`id_split`, `ood_split`: default the first and last of `splits`). Columns COMPARISON_COLUMNS."""
    from . import apply_selection, effective_robustness, metric_rows, paired_table, select_lr

    runs_df = runs_df[runs_df["method"] == method] if len(runs_df) else runs_df
    soups_df = soups_df[soups_df["method"] == method] if len(soups_df) else soups_df
    if runs_df.empty and soups_df.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    chosen = apply_selection(runs_df, select_lr(runs_df, select_split)) if len(runs_df) else runs_df
    sources = [(v, chosen) for v in variant_order(chosen["variant"].unique())] if len(chosen) else []
    sources += [(v, soups_df) for v in SOUPS if len(soups_df) and (soups_df["variant"] == v).any()]
    keep = ["dataset", "fraction", "seed", "value"]

    def rows_of(frame, variant, split):
        return metric_rows(frame, split, variant=variant)[keep + ["metric"]]

    per_split = {split: {v: rows_of(frame, v, split) for v, frame in sources} for split in splits}
    if fit is not None:  # effective robustness of every variant, seed by seed
        id_split, ood_split = id_split or splits[0], ood_split or splits[-1]
        per_split["effective_robustness"] = {}
        for variant, frame in sources:
            a, b = rows_of(frame, variant, id_split), rows_of(frame, variant, ood_split)
            points = a.merge(b, on=["dataset", "fraction", "seed"], suffixes=("_id", "_ood"))
            points = points.rename(columns={"value_id": "id", "value_ood": "ood"})
            per_split["effective_robustness"][variant] = points.assign(
                value=effective_robustness(points, fit) if len(points) else [], metric=f"{ood_split} - trend")[keep + ["metric"]]
    out = []
    for split, by_variant in per_split.items():
        base = by_variant.get(BASELINE, pd.DataFrame(columns=keep))
        for variant, rows in by_variant.items():
            if rows.empty:
                continue
            summary = stats.summarise(rows, by=["dataset", "fraction", "metric"], level=level)
            paired = paired_table(rows, base, f"{variant} - {BASELINE}", level) if len(base) else None
            for r in summary.itertuples(index=False):
                p = paired[(paired["dataset"] == r.dataset) & (paired["fraction"] == r.fraction)] \
                    if paired is not None else pd.DataFrame()
                p = p.iloc[0] if len(p) else None
                out.append({"dataset": r.dataset, "method": method, "fraction": r.fraction, "variant": variant,
                            "split": split, "metric": r.metric, "mean": r.mean, "low": r.low, "high": r.high, "n": r.n,
                            "diff": np.nan if p is None or variant == BASELINE else p["mean_diff"],
                            "diff_low": np.nan if p is None or variant == BASELINE else p["low"],
                            "diff_high": np.nan if p is None or variant == BASELINE else p["high"],
                            "n_paired": 0 if p is None else int(p["n"])})
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def missing_variants(comparison: pd.DataFrame, wanted: Sequence[str] = ("best", "last", "swa", "ema", "wise_ft",
                                                                         "uniform_soup", "greedy_soup")) -> list[str]:
    """The kinds of weights `averaging_comparison` found no rows of (`wise_ft`: any alpha)."""
    have = set(comparison["variant"]) if len(comparison) else set()
    return [w for w in wanted if not any(v == w or (w == "wise_ft" and str(v).startswith("wise_ft_")) for v in have)]


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

def calibration_rows(records: Sequence[Mapping]) -> pd.DataFrame:
    """One row per (run or soup, weight variant, split) of the records' `calibration`: dataset,
    method, fraction, seed, lr, kind (run | soup), variant, headline (the record's reported
    variant), split, CALIBRATION_NUMBERS, temperature_split. Records made before calibration was
    recorded give no rows. A figure registered after a record was made is computed from the run's
    saved predictions where it can be (`Figure.from_predictions`); else it is NaN and a warning
    names the runs and the figures."""
    rows, lacking = [], {}
    for record in records:
        base = {k: record.get(k) for k in ("run_id", "dataset", "method", "fraction", "seed", "lr")}
        base["kind"] = record.get("kind", "run")
        headline = (record.get("selection") or {}).get("variant")
        run = runs.Run.of_record(record) if base["kind"] == "run" and "experiment" in record else None
        for variant, per_split in (record.get("calibration") or {}).items():
            for split, values in per_split.items():
                values = dict(values)
                for name in (q for q in CALIBRATION_FIELDS if q not in values):
                    figure = CALIBRATION.get(name)
                    path = run and run.prediction_path(split, None if variant == headline else variant)
                    if figure and figure.from_predictions and path and path.is_file():
                        values[name] = figure.from_predictions(pd.read_parquet(path))
                    else:
                        lacking.setdefault(record.get("run_id"), set()).add(name)
                rows.append({**base, "variant": variant, "headline": variant == headline, "split": split,
                             **{k: values.get(k) for k in (*CALIBRATION_NUMBERS, "temperature_split")}})
    if lacking:
        named = "; ".join(f"{r} ({', '.join(sorted(f))})" for r, f in list(lacking.items())[:5])
        warnings.warn(f"calibration: {len(lacking)} record(s) were made before figures they lack, and their saved "
                      f"predictions cannot give them (shown as NaN): {named}{' ...' if len(lacking) > 5 else ''}; "
                      "rerun those runs (force=True) to compute them", stacklevel=2)
    columns = ["run_id", "dataset", "method", "fraction", "seed", "lr", "kind", "variant", "headline", "split",
               *CALIBRATION_NUMBERS, "temperature_split"]
    return pd.DataFrame(rows, columns=columns).astype({k: float for k in CALIBRATION_NUMBERS})


def calibration_table(rows: pd.DataFrame, level: float = 0.95, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and `level` interval over seeds of each figure of `evaluate.CALIBRATION`, before (`ece`,
    ...) and after temperature scaling (`ece_ts`, ..., the temperature fitted on ID validation), per
    (dataset, method, fraction, variant, split). Long rows: ..., quantity, mean, low, high, n."""
    columns = ["dataset", "method", "fraction", "variant", "split", "quantity", "mean", "low", "high", "n"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    if splits is not None:
        rows = rows[rows["split"].isin(list(splits))]
    long = rows.melt(id_vars=["dataset", "method", "fraction", "seed", "variant", "split"],
                     value_vars=list(CALIBRATION_NUMBERS), var_name="quantity", value_name="value")
    table = stats.summarise(long, by=["dataset", "method", "fraction", "variant", "split", "quantity"], level=level)
    return table[columns]


def calibration_gains(rows: pd.DataFrame, level: float = 0.95, splits: Sequence[str] = ("id_test", "test")) -> pd.DataFrame:
    """What temperature scaling does to ECE, per (dataset, method, fraction, variant, split) of
    `calibration_rows`: mean ECE before (`ece`) and after (`ece_ts`) over seeds, and after - before
    paired by seed (`analysis.paired_table`): diff, diff_low, diff_high, n_paired. The columns
    `figures.averaging_gains` draws (metric 'ECE'), in `variant_order`."""
    from . import paired_table

    columns = ["dataset", "method", "fraction", "variant", "split", "metric", "ece", "ece_ts", "diff", "diff_low",
               "diff_high", "n_paired"]
    rows = rows[rows["split"].isin(list(splits))].dropna(subset=["ece", "ece_ts"]) if len(rows) else rows
    out = []
    for variant in variant_order(rows["variant"].unique() if len(rows) else []):
        for split in splits:
            part = rows[(rows["variant"] == variant) & (rows["split"] == split)]
            if part.empty:
                continue
            paired = paired_table(part.assign(value=part["ece_ts"]), part.assign(value=part["ece"]), "ece_ts - ece",
                                  level, by=("dataset", "method", "fraction"))
            means = part.groupby(["dataset", "method", "fraction"])[["ece", "ece_ts"]].mean()
            for r in paired.itertuples(index=False):
                ece, ece_ts = means.loc[(r.dataset, r.method, r.fraction)]
                out.append({"dataset": r.dataset, "method": r.method, "fraction": r.fraction, "variant": variant,
                            "split": split, "metric": "ECE", "ece": ece, "ece_ts": ece_ts, "diff": r.mean_diff,
                            "diff_low": r.low, "diff_high": r.high, "n_paired": int(r.n)})
    return pd.DataFrame(out, columns=columns)


def _findings(table: pd.DataFrame, question, measured, lower_is_better: bool = False) -> pd.DataFrame:
    """Rows of a paired table (diff, diff_low, diff_high, n_paired) as `analysis.findings` rows: the
    verdict holds when the whole interval lies above zero (below, with `lower_is_better`)."""
    from . import finding_frame, interval_verdict, verdict

    rows = []
    for r in table.dropna(subset=["diff"]).itertuples(index=False):
        side = interval_verdict(r.diff_low, r.diff_high)
        holds = side if side is None or not lower_is_better else not side
        rows.append({"question": question(r), "measured": measured(r), "holds": holds, "verdict": verdict(holds),
                     "value": r.diff, "low": r.diff_low, "high": r.diff_high, "n": r.n_paired})
    return finding_frame(rows)


def averaging_findings(comparison: pd.DataFrame, level: float = 0.95, splits: Sequence[str] = ("id_test", "test")) -> pd.DataFrame:
    """`averaging_comparison` as findings: each variant minus the best single run on each split and
    fraction, paired by seed; it holds when the interval lies above zero (averaging helps)."""
    from . import fmt_ci

    rows = comparison[comparison["split"].isin(list(splits)) & (comparison["variant"] != BASELINE)]
    rows = rows.assign(_order=rows["variant"].map({v: i for i, v in enumerate(variant_order(rows["variant"]))}))
    rows = rows.sort_values(["_order", "fraction"], kind="stable")
    return _findings(rows, lambda r: f"{variant_label(r.variant)} - best single run on {r.split} ({r.metric}), "
                               f"fraction {r.fraction:g} (paired, {level:.0%})",
                     lambda r: fmt_ci(r.diff, r.diff_low, r.diff_high, r.n_paired))


def calibration_findings(gains: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """`calibration_gains` as findings: temperature scaling lowers a variant's ECE on a split when the
    after - before interval (paired by seed) lies below zero."""
    from . import fmt_ci

    return _findings(gains, lambda r: f"temperature scaling lowers the ECE of {variant_label(r.variant)} on {r.split}, "
                                      f"fraction {r.fraction:g} (paired, {level:.0%})",
                     lambda r: f"{r.ece:.3f} -> {r.ece_ts:.3f}: {fmt_ci(r.diff, r.diff_low, r.diff_high, r.n_paired)}",
                     lower_is_better=True)


def reliability_bins(predictions: pd.DataFrame, n_bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """A reliability diagram's numbers from saved predictions (`p_top1`, `y_pred`, `y_true`): per
    confidence bin of `evaluate.confidence_bins` (as the ECE bins them),
    the count, the mean confidence and the accuracy (NaN for an empty bin), and `gap` = accuracy -
    confidence. Their count-weighted mean |gap| is the ECE of the saved top-1 probabilities."""
    missing = [c for c in ("p_top1", "y_pred", "y_true") if c not in predictions.columns]
    if missing:
        raise ValueError(f"reliability_bins: the predictions lack {missing}; pass a saved predictions frame "
                         "(runs.Run(...).predictions(split))")
    conf = predictions["p_top1"].to_numpy(dtype=float)
    correct = (predictions["y_pred"].to_numpy() == predictions["y_true"].to_numpy()).astype(float)
    bins = confidence_bins(torch.from_numpy(conf), n_bins).numpy()
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    edges = np.arange(n_bins + 1) / n_bins
    return pd.DataFrame({"bin": np.arange(n_bins), "low": edges[:-1], "high": edges[1:], "count": count,
                         "confidence": confidence, "accuracy": accuracy, "gap": accuracy - confidence})


def soup_stage_records(output_dir: str | Path, experiment: str, dataset: str | None = None) -> list[dict]:
    """The soup stage's run records and current soups (`soups.load_soups`), of one dataset if given."""
    records = [*runs.load_records(paths.experiment_dir(output_dir, experiment)), *load_soups(output_dir, experiment)]
    return [r for r in records if dataset is None or r.get("dataset") == dataset]


def averaging_calibration(records: Sequence[Mapping], runs_df: pd.DataFrame, method: str = "finetune",
                          select_split: str = "id_val") -> pd.DataFrame:
    """`calibration_rows` of the weights `averaging_comparison` compares: every variant of the runs of
    the learning rate chosen on `select_split` (per dataset and fraction), and the soups."""
    from . import select_lr

    rows = calibration_rows(records)
    rows = rows[rows["method"] == method]
    if rows.empty or runs_df.empty:
        return rows[rows["kind"] == "soup"].reset_index(drop=True)
    chosen = select_lr(runs_df[runs_df["method"] == method], select_split)[["dataset", "fraction", "lr"]]
    runs_part = rows[rows["kind"] != "soup"].merge(chosen, on=["dataset", "fraction", "lr"])
    return pd.concat([runs_part, rows[rows["kind"] == "soup"]], ignore_index=True)


def variant_predictions(output_dir: str | Path, experiment: str, rows: pd.DataFrame, split: str, seed,
                        fraction: float, variants: Sequence[str]) -> dict[str, pd.DataFrame]:
    """{variant: saved predictions on `split`} for one seed and fraction, from the rows of
    `averaging_calibration` (a run's variant from its folder, a soup's from the soups folder);
    variants without saved predictions are left out."""
    folder = paths.experiment_dir(output_dir, experiment)
    out = {}
    for variant in variants:
        match = rows[(rows["variant"] == variant) & (rows["seed"] == seed) & (rows["fraction"] == fraction)
                     & (rows["split"] == split)]
        if match.empty:
            continue
        row = match.iloc[0]
        run = runs.Run(folder / ("soups" if row["kind"] == "soup" else "") / row["run_id"])
        path = run.prediction_path(split, None if row["headline"] else variant)
        if path.is_file():
            out[variant] = run.predictions(split, variant=None if row["headline"] else variant)
    return out


def records_of(output_dir: str | Path, experiment: str, run_ids) -> list[dict]:
    """The run records of `experiment` whose ids are in `run_ids` (e.g. the runs 04 chose)."""
    wanted = set(run_ids)
    return [r for r in runs.load_records(paths.experiment_dir(output_dir, experiment)) if r.get("run_id") in wanted]
