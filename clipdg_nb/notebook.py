"""Small helpers the numbered notebooks call, so their cells stay narrative plus short calls.

Configs from a notebook's parameters, the (method, lr) runs of one sweep point, and reading a
run's predictions and metrics back from disk.
"""
from __future__ import annotations

import numbers
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from . import analysis, results

from .vocab import METHODS, PROBE_METHODS

# config imports data, hence torch and wilds: imported where needed, so that 04_analysis stays light


def config_from_namespace(cls, namespace: Mapping[str, Any], **overrides):
    """A validated config of `cls` from the notebook's globals (its parameters), plus overrides.

    Names the dataclass does not know are ignored (notebook-only parameters such as `force`);
    values are validated by the config, which names any bad parameter.
    """
    from .config import from_params

    names = {f.name for f in fields(cls)}
    params = {k: namespace[k] for k in names if k in namespace}
    params.update(overrides)
    return from_params(cls, params)


def finetune_configs(namespace: Mapping[str, Any], methods: Sequence[str], lrs: Sequence[float]) -> list:
    """The FinetuneConfig of each (method, lr) of one sweep point, in order.

    Probe methods (linear_probe, vision_only_probe) have no learning rate (their L2 strength is
    chosen on the validation split), so they run once, recorded with the first lr.
    """
    from .config import FinetuneConfig

    if isinstance(methods, str) or not list(methods):
        raise ValueError(f"methods={methods!r} must be a non-empty list, e.g. ['linear_probe', 'finetune']")
    if isinstance(lrs, (str, numbers.Number)) or not list(lrs):
        raise ValueError(f"lrs={lrs!r} must be a non-empty list of learning rates, e.g. [1e-4, 1e-5]")
    allowed = [m for m in METHODS if m != "zeroshot"]
    for m in methods:
        if m == "zeroshot":
            raise ValueError("methods: 'zeroshot' is not trained; it runs in 01_zero_shot.ipynb")
        if m not in allowed:
            raise ValueError(f"methods: {m!r} is not a method; choose from {allowed}")
    configs = []
    for method in dict.fromkeys(methods):
        for lr in (lrs[:1] if method in PROBE_METHODS else dict.fromkeys(lrs)):
            configs.append(config_from_namespace(FinetuneConfig, namespace, method=method, lr=lr))
    return configs


def plan_table(configs: Iterable) -> pd.DataFrame:
    """What a notebook is about to run: one row per config."""
    return pd.DataFrame([{"method": c.method, "lr": c.lr, "fraction": c.fraction, "seed": c.seed,
                          "epochs": c.epochs, "select_split": c.select_split} for c in configs])


def run_dir_of(record: Mapping) -> Path:
    """Where a run record lives: {output_dir}/{experiment}/{run_id} (as api.run_dir)."""
    params = record.get("params") or {}
    return Path(params.get("output_dir", "outputs/runs")) / record.get("experiment", params.get("experiment", "")) / record["run_id"]


def load_predictions(record: Mapping, split: str | None = None, variant: str | None = None) -> pd.DataFrame:
    """A run's predictions of one split (all evaluated splits when None), for its headline weights
    or for another weight variant ('last', 'swa', 'ema', 'wise_ft_0.5', ...)."""
    headline = (record.get("selection") or {}).get("variant", "selected")
    folder = run_dir_of(record)
    if variant not in (None, headline):
        known = sorted((record.get("variants") or {}).keys())
        if variant not in known:
            raise ValueError(f"run {record['run_id']} has no variant {variant!r}; it has {known}")
        folder = folder / "variants" / variant
    splits = [split] if split is not None else list(record["metrics"])
    frames = []
    for s in splits:
        path = folder / "predictions" / f"{s}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"no predictions at {path}; was the run made with save_predictions=True?")
        frame = results.read_predictions(folder, s)
        frames.append(frame if "split" in frame.columns else frame.assign(split=s))
    return pd.concat(frames, ignore_index=True)


def metrics_table(records: Mapping | Iterable[Mapping], splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Each run's headline metric per split (one row per run: method, lr, then a column per split)."""
    if isinstance(records, Mapping):
        records = [records]
    rows = []
    for rec in records:
        row = {"run_id": rec["run_id"], "method": rec["method"], "lr": (rec.get("params") or {}).get("lr")}
        sel = rec.get("selection") or {}
        if sel.get("epoch") is not None:
            row["selected epoch"] = sel["epoch"]
        for split, metrics in rec["metrics"].items():
            if splits is None or split in splits:
                name = analysis.headline_metric(rec["dataset"], split)
                row[f"{split} {name}"] = metrics.get(name)
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(predictions: pd.DataFrame, fields: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy per group value for each group column and split: split, field, group, acc, n."""
    fields = [f for f in (fields or ("region", "year", "location")) if f in predictions.columns]
    parts = []
    for split, frame in predictions.groupby("split", sort=False):
        for field in fields:
            t = analysis.group_accuracy(frame, field).sort_values("group")
            parts.append(t.rename(columns={"value": "acc"}).assign(split=split, field=field))
    cols = ["split", "field", "group", "acc", "n"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def prediction_group_table(tidy: pd.DataFrame, output_dir: str | Path, split: str, field: str,
                           k: int | None = 3) -> pd.DataFrame:
    """Per-group accuracy from the saved predictions of the runs in `tidy` (headline weights),
    averaged over seeds per (method, fraction); the `k` worst groups of each when k is given.
    For group fields WILDS does not report per group (iWildCam locations)."""
    runs = tidy[tidy["headline"]].drop_duplicates("run_id")
    parts = []
    for run in runs.itertuples(index=False):
        path = Path(output_dir) / run.experiment / run.run_id
        if not (path / "predictions" / f"{split}.parquet").is_file():
            continue
        preds = results.read_predictions(path, split)
        if field in preds.columns:
            t = analysis.group_accuracy(preds, field)
            parts.append(t.assign(method=run.method, fraction=run.fraction, seed=run.seed))
    if not parts:
        return pd.DataFrame(columns=["method", "fraction", "group", "value", "n_seeds"])
    table = (pd.concat(parts).groupby(["method", "fraction", "group"])["value"].agg(value="mean", n_seeds="count")
             .reset_index().sort_values(["method", "fraction", "value"]))
    return table.groupby(["method", "fraction"]).head(k).reset_index(drop=True) if k else table.reset_index(drop=True)


def comparison_examples(comparison: pd.DataFrame, category: str, n: int = 8) -> pd.DataFrame:
    """Examples of one comparison category as a predictions frame for the static gallery: the
    wrong prediction is shown (run A's for 'fixed' and 'both_wrong', run B's for 'broken')."""
    part = comparison[comparison["category"] == category]
    if category == "broken":
        part = part.assign(y_pred=part["y_pred_b"], p_top1=part["p_top1_b"])
    return part.sort_values(["p_top1", "idx"], ascending=[False, True]).head(n).reset_index(drop=True)


def metrics_long(records: Iterable[Mapping]) -> pd.DataFrame:
    """Headline metric per (run, split) as long rows (variant = 'method lr=...'), for `plots.variant_bars`."""
    rows = []
    for rec in records:
        lr = (rec.get("params") or {}).get("lr")
        label = rec["method"] if rec["method"] in PROBE_METHODS or lr is None else f"{rec['method']} lr={lr:g}"
        for split, metrics in rec["metrics"].items():
            name = analysis.headline_metric(rec["dataset"], split)
            rows.append({"variant": label, "split": split, "metric": name, "value": metrics.get(name)})
    return pd.DataFrame(rows, columns=["variant", "split", "metric", "value"])


def comparison_variants(record: Mapping, preferred: Sequence[tuple] = (("last", "swa"), ("last", "best"))) -> tuple:
    """The two weight variants to compare example by example: SWA against the last epoch when the
    run has both, else the last epoch against the best. A run with one set of weights (a probe) has
    nothing to compare and gets an error saying so."""
    have = set(record.get("variants") or {})
    for a, b in preferred:
        if {a, b} <= have:
            return a, b
    raise ValueError(f"run {record['run_id']} ({record['method']}) has weight variants {sorted(have) or 'none'}; "
                     "03_swa_ablation compares variants of a trained run (finetune, lp_ft, vision_only)")
