"""Tables the notebooks and `clipdg table` show: one run's metrics, its weight variants, accuracy
per group and failure cases of its saved predictions, a soup beside its ingredients, the plan of a
sweep point, and an experiment's headline numbers per method (with intervals)."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import METHODS
from ..data import GROUP_FIELDS, SPLIT_TITLES, dataset_spec, group_labels, headline_metric, metadata_column, split_indices


NO_LR = -1.0  # stands for "no learning rate" (zero-shot, probes) where pandas would drop NaN keys


def with_lr_key(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with `_lr`: its learning rate, or NO_LR where it has none (a groupable key)."""
    return df.assign(_lr=df["lr"].astype(float).fillna(NO_LR))


def plan_table(configs: Iterable) -> pd.DataFrame:
    """What a notebook is about to run: one row per config."""
    return pd.DataFrame([{"method": c.method, "lr": c.lr if METHODS[c.method].has_lr else None,
                          "fraction": c.fraction, "seed": c.seed,
                          "epochs": c.epochs if METHODS[c.method].end_to_end else None,
                          "select_split": c.select_split} for c in configs])


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


def natural_key(value) -> tuple:
    """Sort key: numbers by value (camera locations 2 before 10, years), then text alphabetically."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def group_accuracy(predictions: pd.DataFrame, fields=None) -> pd.DataFrame:
    """Accuracy and count per split, group field present (FMoW region and year, iWildCam location) and
    group: columns split, field, group, value, n; groups in natural order."""
    fields = [f for f in (fields or GROUP_FIELDS) if f in predictions.columns]
    frame = predictions if "split" in predictions.columns else predictions.assign(split="")
    correct = frame["y_true"] == frame["y_pred"]
    parts = []
    for field in fields:
        table = correct.groupby([frame["split"], frame[field]], sort=False).agg(value="mean", n="count").reset_index()
        table = table.rename(columns={field: "group"}).assign(field=field)
        parts.append(table.sort_values(["split", "group"], key=lambda s: s.map(natural_key) if s.name == "group" else s))
    columns = ["split", "field", "group", "value", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def failure_cases(predictions: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    """Wrong predictions ranked by the model's confidence in the wrong class (most confident first)."""
    wrong = predictions[predictions["y_pred"] != predictions["y_true"]]
    return wrong.sort_values(["p_top1", "idx"], ascending=[False, True]).head(n).reset_index(drop=True)


def soup_table(record: Mapping, ingredients: list[Mapping]) -> pd.DataFrame:
    """One soup record beside its ingredients (their `last` weights): a row per model and split with the
    headline metric, whether the greedy soup kept it, and its score on the selection split."""
    rows, greedy = [], set(record["soups"]["greedy_soup"]["ingredients"])
    scores = record["selection"]["ingredient_scores"]
    models = [(r["run_id"], f"lr={r['lr']:g}", (r.get("variants") or {}).get("last") or r["metrics"],
               r["run_id"] in greedy, scores.get(r["run_id"])) for r in ingredients]
    models += [(record["run_id"], v, record["variants"][v], None, record["soups"][v]["score"])
               for v in ("uniform_soup", "greedy_soup")]
    for run_id, model, metrics, kept, score in models:
        for split, values in metrics.items():
            metric = headline_metric(record["dataset"], split)
            rows.append({"model": model, "split": split, "metric": metric, "value": values.get(metric),
                         "in_greedy_soup": kept, f"{record['selection']['split']}_score": score})
    return pd.DataFrame(rows)


HEADLINE_KEYS = ["dataset", "method", "variant", "fraction", "lr"]
HEADLINE_COLUMNS = [*HEADLINE_KEYS, "column", "split", "metric", "mean", "low", "high", "n"]
FORMATS = ("text", "csv", "markdown")


def headline_table(df: pd.DataFrame, id_split: str = "id_test", ood_split: str = "test", level: float = 0.95,
                   column: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """Mean and `level` interval over seeds (`stats.mean_ci`) of each dataset's ID and OOD headline
    metric (or `metric`, e.g. a calibration figure), per (dataset, method, variant, fraction, lr):
    long rows with columns HEADLINE_COLUMNS (`column`: a label, e.g. the experiment; default the
    frame's experiment). Pass the frame after `analysis.apply_selection` for one learning rate per
    method and fraction."""
    from ..runs import check_one_setting
    from .stats import mean_ci

    check_one_setting(df, "headline_table")
    rows = []
    for split in (id_split, ood_split):
        part = df[df["split"] == split]
        part = part[part["metric"] == (metric or part["dataset"].map(lambda d: headline_metric(d, split)))]
        part = with_lr_key(part).drop(columns="lr").rename(columns={"_lr": "lr"})
        per_seed = part.groupby([*HEADLINE_KEYS, "seed", "metric"], dropna=False)["value"].mean().reset_index()
        for key, group in per_seed.groupby([*HEADLINE_KEYS, "metric"], dropna=False, sort=True):
            ci = mean_ci(group["value"], level=level)
            label = column if column is not None else ", ".join(map(str, dict.fromkeys(df["experiment"])))
            rows.append({**dict(zip([*HEADLINE_KEYS, "metric"], key)), "column": label, "split": split,
                         **{k: ci[k] for k in ("mean", "low", "high", "n")}})
    table = pd.DataFrame(rows, columns=HEADLINE_COLUMNS)
    return table.replace({"lr": {NO_LR: np.nan}}).sort_values(HEADLINE_KEYS, kind="stable").reset_index(drop=True)


def ci_text(mean, low, high, digits: int, signed: bool) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{f.format(mean)} [n/a (1 seed)]"
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]"


def lr_text(lr) -> str:
    return "" if lr is None or (isinstance(lr, float) and math.isnan(lr)) else f"{lr:g}"


def _wide(part: pd.DataFrame, digits: int) -> pd.DataFrame:
    """One dataset's long headline rows as display strings: a row per (method, variant, fraction[, lr]),
    per column (experiment or paired difference) the ID and OOD mean [interval] and the seeds."""
    names = list(dict.fromkeys(part["column"]))
    experiments = [c for c in names if not part.loc[part["column"] == c, "paired"].any()]
    by_lr = len(experiments) <= 1
    keys = ["method", "variant", "fraction"] + (["lr"] if by_lr else [])
    splits = list(dict.fromkeys(part["split"]))
    out = {}
    for row in part.itertuples(index=False):
        key = tuple(getattr(row, k) if k != "lr" else lr_text(row.lr) for k in keys)
        cells = out.setdefault(key, {})
        prefix = f"{row.column} " if len(names) > 1 else ""
        if not by_lr and not row.paired:
            cells[f"{prefix}lr"] = lr_text(row.lr)
        cells[f"{prefix}{_split_title(row.split)}"] = ci_text(row.mean, row.low, row.high, digits, row.paired)
        cells[f"{prefix}{'pairs' if row.paired else 'seeds'}"] = str(int(row.n))
    order = [f"{p}{c}" for name in names for p in [f"{name} " if len(names) > 1 else ""]
             for c in (["lr"] if not by_lr and name in experiments else [])
             + [_split_title(s) for s in splits] + (["seeds"] if name in experiments else ["pairs"])]
    frame = pd.DataFrame([{**dict(zip(keys, k)), **v} for k, v in out.items()])
    frame = frame.reindex(columns=keys + order).fillna("")
    frame["fraction"] = frame["fraction"].map(lambda f: f"{f:g}" if isinstance(f, float) else f)
    return frame


def split_summary(dataset) -> pd.DataFrame:
    """One row per split the dataset has: size, classes present, and the groups it holds."""
    spec = dataset_spec(dataset.dataset_name)
    y = np.asarray(dataset.y_array)
    rows = []
    for split in spec.splits:
        idx = split_indices(dataset, split)
        row = {"split": split, "title": SPLIT_TITLES[split], "n": len(idx), "classes": int(len(np.unique(y[idx])))}
        for field in spec.eval_groups:
            names = group_labels(dataset, field, np.unique(metadata_column(dataset, field)[idx]))
            row[field] = ", ".join(names) if len(names) <= 6 else f"{len(names)} {field}s"
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(name: str, dataset) -> str:
    """A loaded dataset in words: its folder, size and classes, then `split_summary`."""
    table = split_summary(dataset)
    return f"{name} ({dataset.data_dir}): {len(dataset)} images, {dataset.n_classes} classes\n" + table.to_string(index=False)


def _split_title(split: str) -> str:
    return SPLIT_TITLES.get(split, split)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs `tabulate`, not a dependency)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def format_headline(table: pd.DataFrame, fmt: str = "text", digits: int = 3, level: float = 0.95,
                    selection: str | None = None, headings: bool = True) -> str:
    """`headline_table` / `analysis.compare_experiments` rows as text (one table per dataset),
    markdown (a section per dataset; `headings=False`: a caption line instead of a heading) or CSV
    (the numbers, long, every dataset)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    table = table if "paired" in table.columns else table.assign(paired=False)
    if fmt == "csv":
        return table.to_csv(index=False)
    blocks = []
    for dataset, part in table.groupby("dataset", sort=True):
        metrics = "; ".join(f"{_split_title(s)} {m}" for s, m in dict.fromkeys(zip(part["split"], part["metric"])))
        caption = (f"{metrics}; mean [{level:.0%} interval] over seeds"
                   + ("; 'A - B' columns: paired by seed over the seeds both share" if part["paired"].any() else "")
                   + (f"; {selection}" if selection else ""))
        wide = _wide(part, digits)
        title = f"### {dataset}\n\n{caption}" if headings else f"{dataset}: {caption}"
        blocks.append(f"{title}\n\n{markdown_table(wide)}" if fmt == "markdown"
                      else f"{dataset}: {caption}\n{wide.to_string(index=False)}")
    return "\n\n".join(blocks) + "\n"
