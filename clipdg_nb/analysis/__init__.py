"""Analysis of a whole experiment: pure functions over the tidy frame of `runs.tidy`.

Tidy rows: run_id, experiment, dataset, method, fraction, seed, lr, variant, headline, split,
metric, value. Every choice (the learning rate of each method) is made on a validation split;
asking to choose on a test split is an error. Intervals are over seeds (`stats.mean_ci`),
comparisons are paired by seed (`stats.paired_comparison`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import paths, runs
from . import stats
from .stats import logit, sigmoid
from ..data import TEST_SPLITS, VALIDATION_SPLITS, dataset_spec, headline_metric
from .tables import NO_LR, HEADLINE_COLUMNS, group_accuracy, with_lr_key, headline_table

RUN_KEYS = ["dataset", "method", "fraction", "seed", "lr"]


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {missing}; pass the tidy frame of runs.tidy")


def load_experiment_runs(output_dir: str | Path, experiment: str, dataset: str | None = None) -> pd.DataFrame:
    """Every run record of `{output_dir}/{experiment}/*/result.json` as a tidy frame (one dataset if
    given), runs of one method that differ in a setting labelled apart (`runs.split_settings`)."""
    folder = paths.experiment_dir(output_dir, experiment)
    if not folder.is_dir():
        raise FileNotFoundError(f"no runs for experiment={experiment!r}: {folder} does not exist; "
                                f"run the sweep first (clipdg run parameters/{experiment}.yaml)")
    df = runs.split_settings(runs.tidy(runs.load_records(folder)))
    return df[df["dataset"] == dataset].reset_index(drop=True) if dataset is not None else df


def experiments_with_runs(output_dir: str | Path) -> pd.DataFrame:
    """Every experiment with finished runs under `output_dir` (folders `<experiment>/<run>/result.json`),
    newest first: experiment, datasets, runs, newest (the latest result.json's time, UTC)."""
    rows = {}
    for path in runs.experiment_dir(output_dir, ".").glob(f"*/*/{runs.RESULT_FILE}"):
        record = runs.read_json(path)
        if not isinstance(record, dict) or "metrics" not in record or (path.parent / runs.SUPERSEDED_FILE).exists():
            continue
        row = rows.setdefault(path.parent.parent.name, {"datasets": set(), "runs": 0, "mtime": 0.0})
        row["datasets"].add(str(record.get("dataset")))
        row["runs"] += 1
        row["mtime"] = max(row["mtime"], path.stat().st_mtime)
    table = pd.DataFrame([{"experiment": name, "datasets": ", ".join(sorted(r["datasets"])), "runs": r["runs"],
                           "newest": pd.Timestamp(r["mtime"], unit="s", tz="UTC").floor("s")}
                          for name, r in rows.items()], columns=["experiment", "datasets", "runs", "newest"])
    return table.sort_values(["newest", "experiment"], ascending=[False, True]).reset_index(drop=True)


def find_experiment(output_dir: str | Path, experiment: str | None = None, dataset: str | None = None) -> tuple[str, str]:
    """The experiment to analyse and a sentence naming it: `experiment` when given, else the only one with
    runs of `dataset`; with several it guesses none (a reader would take another's figures for the one
    meant) and stops, listing them and the parameter that chooses. Errors list what there is."""
    found = experiments_with_runs(output_dir)
    have = found[found["datasets"].str.split(", ").map(lambda ds: dataset is None or dataset in ds)]
    where = runs.experiment_dir(output_dir, ".").resolve()
    listing = "; ".join(f"{r.experiment} ({r.datasets}: {r.runs} runs)" for r in found.itertuples()) or "none"
    if experiment is None and have.empty:
        raise FileNotFoundError(
            f"no finished {dataset or ''} runs under {where} (experiments with runs: {listing}). Make runs first: "
            "`make demo`, `clipdg run parameters/<experiment>.yaml`, or notebooks 01_zero_shot / 02_few_shot_sweep")
    if experiment is None and len(have) > 1:
        first = have["experiment"].iloc[0]
        raise ValueError(f"experiment=None, and {len(have)} experiments under {where} have {dataset or ''} runs; which "
                         "one? " + "; ".join(f"{r.experiment} ({r.runs} runs, newest {r.newest:%Y-%m-%d %H:%M} UTC)"
                                             for r in have.itertuples())
                         + f". Set the parameter experiment: papermill -p experiment {first} (in JupyterLab: "
                         f"experiment = '{first}' in the parameters cell)")
    if experiment is not None and experiment not in set(have["experiment"]):
        other = found.loc[found["experiment"] == experiment, "datasets"]
        raise FileNotFoundError(
            f"experiment={experiment!r} has no finished {dataset or ''} runs under {where}"
            + (f" (it has {other.iloc[0]} runs: set dataset)" if len(other) else "")
            + f". Experiments with runs: {listing}. Make runs with `clipdg run parameters/{experiment}.yaml` "
            "or notebooks 01_zero_shot / 02_few_shot_sweep with that experiment")
    why = "as asked" if experiment else f"experiment=None: the only one with {dataset or ''} runs there"
    name = experiment or have["experiment"].iloc[0]
    return name, f"analysing experiment {name!r} under {where} ({why}); every figure title names it"


def metric_rows(df: pd.DataFrame, split: str, metric: str | None = None, variant: str | None = None) -> pd.DataFrame:
    """Rows of one split and metric (default: each dataset's headline metric for that split) for
    the headline variant of each run, or for `variant` ('swa', 'last', ...) where runs have it."""
    _require(df, runs.TIDY_COLUMNS, "metric_rows")
    rows = df[df["split"] == split]
    rows = rows[rows["headline"]] if variant is None else rows[rows["variant"] == variant]
    if metric is None:
        wanted = rows["dataset"].map(lambda d: headline_metric(d, split))
        rows = rows[rows["metric"] == wanted]
    else:
        rows = rows[rows["metric"] == metric]
    return rows.reset_index(drop=True)


def select_lr(df: pd.DataFrame, select_split: str = "id_val", metric: str | None = None,
              by: Sequence[str] = ("dataset", "method", "fraction")) -> pd.DataFrame:
    """The learning rate of each (dataset, method, fraction) with the best mean over seeds on a
    validation split (ties go to the smaller lr), together with the other settings its method tunes
    like lr (column `tuned`, e.g. L2-SP's 'l2sp_alpha=0.1': each (lr, tuned) is one candidate). A test split is refused: choosing on it would
    report an optimistic number, the reference study's flaw.

    Returns `by` + lr, tuned, select_split, select_metric, select_mean, n_seeds, n_lrs.
    """
    if select_split in TEST_SPLITS:
        raise ValueError(f"select_split={select_split!r} is a test split; choose on a validation split "
                         f"({list(VALIDATION_SPLITS)}), never on test")
    if select_split not in VALIDATION_SPLITS:
        raise ValueError(f"select_split={select_split!r} must be one of {list(VALIDATION_SPLITS)}")
    by = list(by)
    runs.check_one_setting(df, "select_lr")
    rows = with_lr_key(metric_rows(df, select_split, metric))
    cols = [*by, "lr", "tuned", "select_split", "select_metric", "select_mean", "n_seeds", "n_lrs"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    means = (rows.groupby([*by, "_lr", "tuned", "metric"], dropna=False)["value"]
             .agg(select_mean="mean", n_seeds="count").reset_index())
    means["n_lrs"] = means.groupby(by, dropna=False)["_lr"].transform("nunique")
    best = (means.sort_values([*by, "select_mean", "_lr", "tuned"], ascending=[True] * len(by) + [False, True, True])
            .groupby(by, dropna=False, sort=True).head(1))
    best = best.assign(lr=best["_lr"].where(best["_lr"] != NO_LR), select_split=select_split,
                       select_metric=best["metric"])
    return best[cols].reset_index(drop=True)


def apply_selection(df: pd.DataFrame, selected: pd.DataFrame,
                    by: Sequence[str] = ("dataset", "method", "fraction")) -> pd.DataFrame:
    """The rows of `df` (every split, metric and variant) of the selected learning rates (and tuned
    settings) only."""
    by = list(by)
    keys = with_lr_key(selected)[[*by, "_lr", "tuned"]].drop_duplicates()
    out = with_lr_key(df).merge(keys, on=[*by, "_lr", "tuned"], how="inner")
    return out.drop(columns="_lr")[list(df.columns)].reset_index(drop=True)


def fraction_curves(df: pd.DataFrame, split: str, metric: str | None = None, variant: str | None = None,
                    level: float = 0.95, include_zero_shot: bool = False) -> pd.DataFrame:
    """Mean and `level` interval over seeds per (dataset, method, fraction) on one split.

    Pass the frame after `apply_selection`, so each point is one learning rate. Zero-shot runs
    (fraction 0) are left out unless asked for; see `zero_shot_reference`.
    """
    runs.check_one_setting(df, "fraction_curves")
    rows = metric_rows(df, split, metric, variant)
    if not include_zero_shot:
        rows = rows[rows["method"] != "zeroshot"]
    if rows.empty:
        return pd.DataFrame(columns=["dataset", "method", "fraction", "metric", "mean", "low", "high", "n", "std"])
    return stats.summarise(rows, by=["dataset", "method", "fraction", "metric"], level=level)


def zero_shot_reference(df: pd.DataFrame, split: str, metric: str | None = None) -> dict[str, float]:
    """{dataset: zero-shot value} on one split (mean over zero-shot runs, e.g. template sets averaged)."""
    rows = metric_rows(df, split, metric)
    rows = rows[rows["method"] == "zeroshot"]
    return {d: float(g["value"].mean()) for d, g in rows.groupby("dataset")}


def _by_seed(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("seed")["value"].mean()


def paired_table(a: pd.DataFrame, b: pd.DataFrame, label: str, level: float = 0.95,
                 by: Sequence[str] = ("dataset", "fraction")) -> pd.DataFrame:
    """Per `by` group, the paired comparison (a - b over common seeds) of two sets of metric rows."""
    by = list(by)
    out = []
    keys = sorted(set(map(tuple, a[by].drop_duplicates().to_numpy())) & set(map(tuple, b[by].drop_duplicates().to_numpy())))
    for key in keys:
        mask_a = np.logical_and.reduce([a[c] == v for c, v in zip(by, key)])
        mask_b = np.logical_and.reduce([b[c] == v for c, v in zip(by, key)])
        sa, sb = _by_seed(a[mask_a]), _by_seed(b[mask_b])
        common = sorted(set(sa.index) & set(sb.index))
        if not common:
            continue
        comp = stats.paired_comparison(sa.loc[common], sb.loc[common], level=level)
        out.append({**dict(zip(by, key)), "comparison": label, **{k: v for k, v in comp.items() if k != "seeds"}})
    cols = [*by, "comparison", "n", "mean_diff", "low", "high", "std_diff", "t", "p_value",
            "n_a_better", "n_b_better", "n_tied"]
    return pd.DataFrame(out, columns=cols)


def compare_methods(df: pd.DataFrame, a: str, b: str, split: str, metric: str | None = None,
                    level: float = 0.95) -> pd.DataFrame:
    """`a` minus `b` (e.g. finetune vs vision_only) per (dataset, fraction), paired by seed."""
    runs.check_one_setting(df, "compare_methods")
    rows = metric_rows(df, split, metric)
    return paired_table(rows[rows["method"] == a], rows[rows["method"] == b], f"{a} - {b}", level)


def swa_gain(df: pd.DataFrame, split: str, metric: str | None = None, baseline: str = "last",
             method: str = "finetune", level: float = 0.95, variant: str = "swa") -> pd.DataFrame:
    """The `variant` weights ('swa', 'ema', any of averaging.AVERAGES) minus `baseline` ('last'
    epoch, or 'best' = plain fine-tuning with selection on validation) of the same runs of `method`,
    per (dataset, fraction), paired by seed."""
    runs.check_one_setting(df, "swa_gain")
    rows = df[df["method"] == method]
    averaged = metric_rows(rows, split, metric, variant=variant)
    base = metric_rows(rows, split, metric, variant=baseline)
    if averaged.empty:
        raise ValueError(f"no {variant!r} variant for method={method!r} on split={split!r}; run with it enabled "
                         "(averaging.AVERAGES names the config field, e.g. swa=True)")
    return paired_table(averaged, base, f"{variant} - {baseline}", level)


def id_ood_points(df: pd.DataFrame, id_split: str = "id_test", ood_split: str = "test",
                  id_metric: str | None = None, ood_metric: str | None = None) -> pd.DataFrame:
    """One row per run (headline variant): dataset, method, fraction, seed, lr, id, ood."""
    keys = ["run_id", *RUN_KEYS]
    a = metric_rows(df, id_split, id_metric)[keys + ["value"]].rename(columns={"value": "id"})
    b = metric_rows(df, ood_split, ood_metric)[["run_id", "value"]].rename(columns={"value": "ood"})
    return a.merge(b, on="run_id").reset_index(drop=True)


def fit_trend(points: pd.DataFrame, methods: Sequence[str] | None = None) -> dict | None:
    """Least-squares line of logit(OOD) on logit(ID) over the runs of `methods` (default: all):
    the 'baseline' trend effective robustness is measured against. None with under two runs."""
    sub = points if methods is None else points[points["method"].isin(list(methods))]
    sub = sub.dropna(subset=["id", "ood"])
    if len(sub) < 2 or sub["id"].nunique() < 2:
        return None
    slope, intercept = np.polyfit(logit(sub["id"]), logit(sub["ood"]), 1)
    label = "trend of " + (", ".join(methods) if methods else "all runs")
    return {"slope": float(slope), "intercept": float(intercept), "label": label, "n": int(len(sub))}


def effective_robustness(points: pd.DataFrame, fit: dict) -> pd.Series:
    """OOD minus the OOD the trend predicts at the run's ID value (> 0: more robust than the trend)."""
    return points["ood"] - sigmoid(fit["slope"] * logit(points["id"]) + fit["intercept"])


def worst_groups(df: pd.DataFrame, split: str, field: str, k: int | None = 3,
                 output_dir: str | Path | None = None) -> pd.DataFrame:
    """The `k` lowest groups of `field` per (dataset, method, fraction), averaged over seeds: from
    the per-group metrics WILDS reports (FMoW `acc_region:Asia`), else from the saved predictions
    under `output_dir` (iWildCam locations, which WILDS does not report per group)."""
    rows = df[(df["split"] == split) & df["headline"] & df["metric"].str.startswith(f"acc_{field}:")]
    parts = [rows.assign(group=rows["metric"].str.split(":", n=1).str[1])]
    if rows.empty and output_dir is not None:
        parts = []
        for run in df[df["headline"]].drop_duplicates("run_id").itertuples(index=False):
            found = runs.Run(paths.experiment_dir(output_dir, run.experiment) / run.run_id)
            if found.prediction_path(split).is_file():
                table = group_accuracy(found.predictions(split), [field])
                parts.append(table.assign(dataset=run.dataset, method=run.method, fraction=run.fraction))
    columns = ["dataset", "method", "fraction", "group", "value", "n"]
    if not any(len(p) for p in parts):
        return pd.DataFrame(columns=columns)
    table = (pd.concat(parts).groupby(["dataset", "method", "fraction", "group"])["value"]
             .agg(value="mean", n="count").reset_index()
             .sort_values(["dataset", "method", "fraction", "value"]).reset_index(drop=True))
    return table.groupby(["dataset", "method", "fraction"]).head(k).reset_index(drop=True) if k else table


def settings_table(selected: pd.DataFrame, df: pd.DataFrame, test_split: str = "test") -> pd.DataFrame:
    """The selected settings, with the test number they lead to beside the validation number."""
    test = fraction_curves(apply_selection(df, selected), test_split, include_zero_shot=True)
    test = test.rename(columns={"mean": f"{test_split}_mean", "low": f"{test_split}_low",
                                "high": f"{test_split}_high", "metric": f"{test_split}_metric"})
    keep = ["dataset", "method", "fraction", f"{test_split}_metric", f"{test_split}_mean",
            f"{test_split}_low", f"{test_split}_high"]
    return selected.merge(test[keep], on=["dataset", "method", "fraction"], how="left")


def fmt_ci(mean: float, low: float, high: float, n: int | None = None) -> str:
    """A finding's measured difference: '+0.102 [+0.097, +0.107]', or '+0.050, interval n/a (1 seed)'."""
    if not (np.isfinite(low) and np.isfinite(high)):  # one seed (or none paired): no spread to measure
        return f"{mean:+.3f}, interval n/a ({n} seed{'s' if n != 1 else ''})" if n is not None else f"{mean:+.3f}, interval n/a"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


VERDICTS = {True: "holds", False: "does not hold", None: "inconclusive"}
NOT_MEASURED = "not measured"


def verdict(holds, measured: bool = True) -> str:
    """A finding's verdict in words: 'holds', 'does not hold', 'inconclusive' (an interval across
    zero, or one seed: no interval), 'not measured' (the runs it needs are missing)."""
    return VERDICTS[None if holds is None else bool(holds)] if measured else NOT_MEASURED


def interval_verdict(low: float, high: float):
    """True when a paired interval lies above zero, False below, None when it straddles zero."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return True if low > 0 else False if high < 0 else None


def findings(df: pd.DataFrame, dataset: str, id_split: str = "id_test", ood_split: str = "test",
             clip_method: str = "finetune", vision_method: str = "vision_only", level: float = 0.95) -> pd.DataFrame:
    """The study's headline questions, each answered by a measured number (never asserted).

    `df`: runs after learning-rate selection (`apply_selection`). Rows: question, measured, holds
    (True / False; None when the runs are missing or a paired interval straddles zero), verdict (the
    same in words, `verdict`), and for paired differences the numbers: value (mean difference), low,
    high (NaN with one seed), n (seeds paired). Accuracy (`acc_avg`) is used where ID and OOD are
    compared on one scale; paired differences are over seeds with a `level` interval.
    """
    runs.check_one_setting(df, "findings")
    rows = []

    def add(question, measured, holds, r=None, value=None):
        nums = {"value": r["mean_diff"], "low": r["low"], "high": r["high"], "n": int(r["n"])} if r is not None else \
            {"value": value}
        missing = r is None and holds is None  # no paired numbers and no verdict: the runs are not there
        rows.append({"question": question, "measured": measured, "holds": None if holds is None else bool(holds),
                     "verdict": verdict(holds, measured=not missing), **nums})

    top = df["fraction"][df["method"] != "zeroshot"].max() if (df["method"] != "zeroshot").any() else None
    zs = zero_shot_reference(df[df["dataset"] == dataset], id_split, "acc_avg").get(dataset)
    chance = 1 / dataset_spec(dataset).n_classes
    if zs is None:
        add("zero-shot ID accuracy >= 3x chance", "no zero-shot run", None)
    else:
        add("zero-shot ID accuracy >= 3x chance", f"{zs:.3f} = {zs / chance:.1f}x chance ({chance:.4f})", zs >= 3 * chance,
            value=zs)
    ft = metric_rows(df, id_split, "acc_avg")
    ft = ft[(ft["method"] == clip_method) & (ft["fraction"] == top)] if top is not None else ft.iloc[:0]
    if zs is None or ft.empty:
        add(f"{clip_method} ID above zero-shot ID at fraction {top}", "runs missing", None)
    else:
        m = _by_seed(ft).mean()
        add(f"{clip_method} ID above zero-shot ID at fraction {top:g}", f"{m:.3f} vs {zs:.3f} ({m - zs:+.3f})", m > zs,
            value=m - zs)
    for method in sorted(set(df["method"]) - {"zeroshot"}):
        ids, oods = metric_rows(df, id_split, "acc_avg"), metric_rows(df, ood_split, "acc_avg")
        a, b = ids[ids["method"] == method], oods[oods["method"] == method]
        if a.empty or b.empty:
            continue
        gap = a["value"].mean() - b["value"].mean()
        add(f"{method}: OOD accuracy below ID (all fractions)", f"ID {a['value'].mean():.3f}, OOD {b['value'].mean():.3f} "
            f"(gap {gap:+.3f})", gap > 0, value=gap)
    for split in (id_split, ood_split):
        table = compare_methods(df, clip_method, vision_method, split, level=level)
        table = table[table["dataset"] == dataset]
        if table.empty:
            add(f"{clip_method} vs {vision_method} on {split}", "runs missing", None)
            continue
        for _, r in table.sort_values("fraction").iterrows():
            add(f"{clip_method} - {vision_method} on {split}, fraction {r['fraction']:g}",
                fmt_ci(r["mean_diff"], r["low"], r["high"], r["n"]), interval_verdict(r["low"], r["high"]), r)
    for baseline in ("best", "last"):
        try:
            gain = swa_gain(df, ood_split, baseline=baseline, method=clip_method, level=level)
        except ValueError:
            add(f"SWA gain over {baseline} on {ood_split}", "no swa variant", None)
            continue
        gain = gain[gain["dataset"] == dataset]
        for _, r in gain.sort_values("fraction").iterrows():
            add(f"SWA - {baseline} on {ood_split}, fraction {r['fraction']:g} (paired, {level:.0%})",
                fmt_ci(r["mean_diff"], r["low"], r["high"], r["n"]), interval_verdict(r["low"], r["high"]), r)
    return finding_frame(rows)


FINDING_COLUMNS = ["question", "measured", "holds", "verdict", "value", "low", "high", "n"]


def finding_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Findings rows (dicts with FINDING_COLUMNS) as the frame `findings` returns."""
    # object dtype keeps True / False / None as they are (a bool column would turn None into False)
    return pd.DataFrame(list(rows), columns=FINDING_COLUMNS).astype({"holds": object, "value": float, "low": float,
                                                                       "high": float, "n": "Int64"})


def clip_vs_vision(df: pd.DataFrame, splits: Sequence[str], clip_method: str = "finetune",
                   vision_method: str = "vision_only", level: float = 0.95) -> pd.DataFrame:
    """CLIP minus vision-only per (dataset, fraction, split), paired by seed: the fine-tuned pair and,
    where both were run, the two linear probes."""
    pairs = [(clip_method, vision_method), ("linear_probe", "vision_only_probe")]
    tables = [compare_methods(df, a, b, split, level=level).assign(split=split) for a, b in pairs for split in splits]
    tables = [t for t in tables if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else _empty_pairs(splits)


def _empty_pairs(splits) -> pd.DataFrame:
    return paired_table(pd.DataFrame(columns=["dataset", "fraction", "seed", "value"]),
                        pd.DataFrame(columns=["dataset", "fraction", "seed", "value"]), "").assign(split=None)


def swa_gains(df: pd.DataFrame, splits: Sequence[str], method: str = "finetune", level: float = 0.95,
              variant: str = "swa") -> pd.DataFrame:
    """`variant` (SWA by default) minus the last epoch and minus the epoch chosen on validation, per
    split, paired by seed (empty when the runs carry no such weights)."""
    tables = []
    for baseline in ("last", "best"):
        for split in splits:
            try:
                tables.append(swa_gain(df, split, baseline=baseline, method=method, level=level,
                                       variant=variant).assign(split=split))
            except ValueError:  # no such variant in these runs
                pass
    return pd.concat(tables, ignore_index=True) if tables else _empty_pairs(splits)


def compare_experiments(frames_by_experiment: dict[str, pd.DataFrame], id_split: str = "id_test",
                        ood_split: str = "test", level: float = 0.95, select_split: str | None = "id_val",
                        metric: str | None = None) -> pd.DataFrame:
    """Experiments side by side: each one's headline numbers (`tables.headline_table`: mean and
    interval over seeds of each dataset's ID and OOD headline metric per method, variant, fraction),
    then each later experiment minus the first, paired by seed where they share points (same
    dataset, method, variant, fraction, seed; `paired_table`). `frames_by_experiment`: {name: tidy
    frame}. Each experiment's lr is chosen on `select_split` from its own runs; None keeps every lr
    (runs then pair at equal lr). Long rows: tables.HEADLINE_COLUMNS + paired; `column` names the
    experiment or 'B - A'; `n` counts seeds (pairs for a difference). `metric`: a metric or
    calibration figure in place of each split's headline metric."""
    if not frames_by_experiment:
        raise ValueError("compare_experiments: no experiments given")
    chosen = {name: apply_selection(df, select_lr(df, select_split)) if select_split is not None else df
              for name, df in frames_by_experiment.items()}
    parts = [headline_table(df, id_split, ood_split, level, column=name, metric=metric).assign(paired=False)
             for name, df in chosen.items()]
    (first, base), by = next(iter(chosen.items())), ["dataset", "method", "variant", "fraction"]
    for name, df in list(chosen.items())[1:]:
        for split in (id_split, ood_split):
            def shown(d):  # the rows of `split` of the metric the table shows
                return d["metric"] == (metric or d["dataset"].map(lambda x: headline_metric(x, split)))
            a, b = (with_lr_key(d[(d["split"] == split) & shown(d)]) for d in (df, base))
            table = paired_table(a, b, f"{name} - {first}", level, by=by + (["_lr"] if select_split is None else []))
            if not table.empty:
                lr = table["_lr"].where(table["_lr"] != NO_LR) if select_split is None else np.nan
                parts.append(table.assign(lr=lr, column=table["comparison"], split=split, mean=table["mean_diff"],
                                          metric=metric or table["dataset"].map(lambda x: headline_metric(x, split)),
                                          paired=True)[[*HEADLINE_COLUMNS, "paired"]])
    return pd.concat(parts, ignore_index=True)
