"""Tables the notebooks and `clipdg table` show: one run's metrics, its weight variants, the
plan of a sweep point, and an experiment's headline numbers per method (with intervals)."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .config import PROBE_METHODS
from .datasets import headline_metric

_NO_LR = -1.0  # stands for "no learning rate" where pandas would drop NaN keys


def plan_table(configs: Iterable) -> pd.DataFrame:
    """What a notebook is about to run: one row per config."""
    return pd.DataFrame([{"method": c.method, "lr": None if c.method in PROBE_METHODS else c.lr,
                          "fraction": c.fraction, "seed": c.seed, "epochs": None if c.method in PROBE_METHODS
                          else c.epochs, "select_split": c.select_split} for c in configs])


def metrics_table(records: Mapping | Iterable[Mapping], splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Each run's headline metric per split (one row per run: method, lr, then a column per split)."""
    if isinstance(records, Mapping):
        records = [records]
    rows = []
    for rec in records:
        row = {"run_id": rec["run_id"], "method": rec["method"], "lr": rec.get("lr")}
        sel = rec.get("selection") or {}
        if sel.get("epoch") is not None:
            row["selected epoch"] = sel["epoch"]
        for split, metrics in rec["metrics"].items():
            if splits is None or split in splits:
                name = headline_metric(rec["dataset"], split)
                row[f"{split} {name}"] = metrics.get(name)
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_long(records: Iterable[Mapping]) -> pd.DataFrame:
    """Headline metric per (run, split) as long rows (variant = 'method lr=...'), for `plots.variant_bars`."""
    rows = []
    for rec in records:
        lr = rec.get("lr")
        label = rec["method"] if lr is None else f"{rec['method']} lr={lr:g}"
        for split, metrics in rec["metrics"].items():
            name = headline_metric(rec["dataset"], split)
            rows.append({"variant": label, "split": split, "metric": name, "value": metrics.get(name)})
    return pd.DataFrame(rows, columns=["variant", "split", "metric", "value"])


def variant_table(record: dict, splits: Sequence[str] | None = None, metric: str | None = None) -> pd.DataFrame:
    """A run record's weight variants (best, last, swa, ema, wise_ft_*) as rows variant, split,
    metric, value (each split's headline metric unless `metric` is given)."""
    variants = record.get("variants") or {(record.get("selection") or {}).get("variant", "selected"): record["metrics"]}
    rows = []
    for variant, table in variants.items():
        for split, metrics in table.items():
            if splits is not None and split not in splits:
                continue
            name = metric or headline_metric(record["dataset"], split)
            value = metrics.get(name)
            rows.append({"variant": variant, "split": split, "metric": name,
                         "value": math.nan if value is None else float(value)})
    return pd.DataFrame(rows, columns=["variant", "split", "metric", "value"])


def headline_table(df: pd.DataFrame, id_split: str = "id_test", ood_split: str = "test") -> pd.DataFrame:
    """Mean over seeds of the ID and OOD headline metrics per (dataset, method, variant, fraction, lr):
    the quick look `clipdg table` prints."""
    rows = []
    for dataset, part in df.groupby("dataset"):
        for split in (id_split, ood_split):
            metric = headline_metric(dataset, split)
            sel = part[(part["split"] == split) & (part["metric"] == metric)]
            rows.append(sel.assign(column=f"{split}:{metric}"))
    if not rows:
        return pd.DataFrame()
    long = pd.concat(rows)
    long = long.assign(lr=long["lr"].fillna(_NO_LR))
    table = long.pivot_table(index=["dataset", "method", "variant", "fraction", "lr"], columns="column",
                             values="value", aggfunc="mean")
    seeds = long.groupby(["dataset", "method", "variant", "fraction", "lr"])["seed"].nunique().rename("seeds")
    return table.join(seeds).reset_index().replace({"lr": {_NO_LR: np.nan}})
