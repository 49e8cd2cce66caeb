"""Two runs on the same images, example by example: which examples the second fixes, breaks, or
leaves wrong (`compare_runs`), how many of each, and which variants of one run to compare."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import METHODS
from .figures import variant_title

CATEGORIES = ("fixed", "broken", "both_wrong", "both_right")
B_SUFFIX = "_b"  # suffix of run B's columns in a comparison frame


def check_predictions(df: pd.DataFrame, name: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a predictions DataFrame, got {type(df).__name__}")
    missing = [c for c in ("idx", "y_true", "y_pred", "p_top1") if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; a predictions frame has idx, y_true, y_pred, p_top1")


def compare_runs(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Join two runs' predictions on the same examples (idx, and split when both have it).

    Run A's columns keep their names, run B's prediction columns get the suffix `_b`, and
    `category` says what changed from A to B: fixed, broken, both_wrong, both_right.
    """
    check_predictions(a, "a")
    check_predictions(b, "b")
    keys = ["idx"] + (["split"] if "split" in a.columns and "split" in b.columns else [])
    own = [c for c in ("y_pred", "p_top1", "p_true", "topk_labels", "topk_probs") if c in b.columns]
    merged = a.merge(b[keys + own + ["y_true"]].rename(columns={c: c + B_SUFFIX for c in own + ["y_true"]}),
                     on=keys, how="inner")
    if merged.empty:
        raise ValueError("the two runs share no examples (idx); compare predictions of the same split")
    if (merged["y_true"] != merged["y_true" + B_SUFFIX]).any():
        raise ValueError("the two runs disagree on y_true for the same idx; are they of the same dataset?")
    merged = merged.drop(columns="y_true" + B_SUFFIX)
    ok_a = merged["y_pred"] == merged["y_true"]
    ok_b = merged["y_pred" + B_SUFFIX] == merged["y_true"]
    merged["category"] = np.select([~ok_a & ok_b, ok_a & ~ok_b, ~ok_a & ~ok_b], list(CATEGORIES[:3]), CATEGORIES[3])
    return merged


def category_counts(comparison: pd.DataFrame) -> pd.Series:
    """How many examples fall in each comparison category (all four, zeros included)."""
    return comparison["category"].value_counts().reindex(list(CATEGORIES), fill_value=0)


def comparison_variants(record: Mapping, preferred: Sequence[tuple] = (("last", "swa"), ("last", "best"))) -> tuple:
    """The two weight variants to compare example by example: SWA against the last epoch when the
    run has both, else the last epoch against the best. A run with one set of weights (a probe) has
    nothing to compare and gets an error saying so."""
    have = set(record.get("variants") or {})
    for a, b in preferred:
        if {a, b} <= have:
            return a, b
    raise ValueError(f"run {record['run_id']} ({record['method']}) has weight variants {sorted(have) or 'none'}; "
                     "03_swa_ablation compares variants of a run trained end to end ("
                     f"{', '.join(name for name, spec in METHODS.items() if spec.end_to_end)})")


def comparison_title(a: str, b: str) -> str:
    """What a comparison compares, in words: ('last', 'swa') -> 'last epoch → SWA'."""
    return f"{variant_title(a)} → {variant_title(b)}"


def comparison_examples(comparison: pd.DataFrame, category: str, n: int = 8) -> pd.DataFrame:
    """Examples of one comparison category as a predictions frame for the static gallery: the
    wrong prediction is shown (run A's for 'fixed' and 'both_wrong', run B's for 'broken')."""
    part = comparison[comparison["category"] == category]
    if category == "broken":
        part = part.assign(y_pred=part["y_pred_b"], p_top1=part["p_top1_b"])
    return part.sort_values(["p_top1", "idx"], ascending=[False, True]).head(n).reset_index(drop=True)
