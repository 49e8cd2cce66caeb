"""Intervals over seeds and paired comparisons: the statistics every table and figure reports."""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Sequence

import numpy as np
import pandas as pd


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def mean_ci(
    values: Iterable[float],
    level: float = 0.95,
    method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean and confidence interval: ``{"mean", "low", "high", "n", "std"}``.

    ``method="t"``: Student-t interval ``mean -/+ t_{(1+level)/2, n-1} * std / sqrt(n)``
    (std with ddof=1). ``method="bootstrap"``: percentile interval of ``n_boot`` seeded
    resampled means. NaN values are dropped (``n`` counts the rest); with ``n < 2`` the
    bounds and std are NaN rather than an error, since one seed has no spread.
    """
    from scipy import stats

    level = _check_level(level)
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    x = np.asarray(list(values), dtype=float).ravel()
    x = x[~np.isnan(x)]
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n, "std": math.nan}
    std = float(x.std(ddof=1))
    if method == "t":
        half = float(stats.t.ppf((1 + level) / 2, df=n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
            raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))
    return {"mean": mean, "low": low, "high": high, "n": n, "std": std}


def summarise(
    df: pd.DataFrame,
    by: Sequence[str] | None = None,
    value: str = "value",
    **ci_kwargs: Any,
) -> pd.DataFrame:
    """Mean / CI per group of a tidy frame (columns ``by + [mean, low, high, n, std]``).

    ``by`` defaults to every column except run_id, seed, headline and ``value``, i.e. one
    row per configuration aggregated over seeds. Groups with missing keys (e.g. no
    ``experiment``) are kept. ``ci_kwargs`` go to :func:`mean_ci`.
    """
    if by is None:
        by = [c for c in df.columns if c not in ("run_id", "seed", "headline", value)]
    by = list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise ValueError(f"summarise: columns {missing} not in the frame; have {list(df.columns)}")
    rows = []
    for key, group in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **mean_ci(group[value], **ci_kwargs)})
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n", "std"])


def _by_seed(x: Any, name: str) -> pd.Series:
    if isinstance(x, pd.Series):
        s = x
    elif isinstance(x, Mapping):
        s = pd.Series(dict(x))
    else:
        raise TypeError(f"{name} must be a pandas Series indexed by seed or a dict {{seed: value}}")
    if s.index.has_duplicates:
        raise ValueError(f"{name} has duplicated seeds {sorted(s.index[s.index.duplicated()].unique())}")
    return s.astype(float)


def paired_comparison(a: Any, b: Any, level: float = 0.95) -> dict[str, Any]:
    """Paired comparison of two methods across seeds: differences ``a - b`` aligned by seed.

    ``a`` and ``b`` are ``{seed: value}`` dicts or Series indexed by seed, over the same
    seeds. Returns the mean difference with its t-interval, the paired t-test
    (``scipy.stats.ttest_rel``) statistic and two-sided p-value, and how many seeds
    favour each side. With fewer than two pairs the interval and test are NaN.
    """
    from scipy import stats

    level = _check_level(level)
    sa, sb = _by_seed(a, "a"), _by_seed(b, "b")
    only_a = sorted(set(sa.index) - set(sb.index))
    only_b = sorted(set(sb.index) - set(sa.index))
    if only_a or only_b:
        raise ValueError(
            f"seeds do not align: only in a {only_a}, only in b {only_b}; "
            "compare runs over the same seeds"
        )
    seeds = sorted(sa.index)
    xa, xb = sa.loc[seeds].to_numpy(), sb.loc[seeds].to_numpy()
    if np.isnan(xa).any() or np.isnan(xb).any():
        raise ValueError("a or b has NaN values; drop those seeds from both before pairing")
    diff = xa - xb
    ci = mean_ci(diff, level=level, method="t")
    if len(diff) >= 2:
        test = stats.ttest_rel(xa, xb)
        t_stat, p = float(test.statistic), float(test.pvalue)
    else:
        t_stat = p = math.nan
    return {
        "n": len(diff), "seeds": seeds,
        "mean_diff": ci["mean"], "low": ci["low"], "high": ci["high"], "std_diff": ci["std"],
        "t": t_stat, "p_value": p,
        "n_a_better": int((diff > 0).sum()), "n_b_better": int((diff < 0).sum()),
        "n_tied": int((diff == 0).sum()),
    }


def logit(p):
    """log(p / (1 - p)), with p clipped to [1e-4, 1 - 1e-4] (effective robustness fits lines in logit space)."""
    p = np.clip(np.asarray(p, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))
