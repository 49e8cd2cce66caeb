"""The run record (``result.json``), predictions, tidy result tables and statistics.

A run writes ``<run_dir>/result.json`` and ``<run_dir>/predictions/<split>.parquet``;
the existence of ``result.json`` is the only "done" marker, so both are written
atomically (temp file in the same folder, fsync, ``os.replace``).

Run record (a JSON object; keys in ``RUN_RECORD_REQUIRED`` are mandatory)::

    {
      "run_id": "fmow-clip-f10-s0",       # folder name under outputs/runs/
      "dataset": "fmow", "root_dir": "...", "method": "clip_ft",
      "fraction": 0.1,                      # share of the WILDS train split in (0, 1]; 0 = zero-shot
      "seed": 0,
      "params": {...},                    # every notebook parameter, as passed
      "metrics": {"id_val": {"acc_avg": 0.61, ...}, "test": {...}},
      "selection": {"split": "id_val", "metric": "acc_avg", "epoch": 3,
                    "variant": "best"},   # what was chosen, and on which split
      "timings": {"train_s": 812.4, ...},
      "versions": {"python": ..., "torch": ..., ...},   # collect_versions()
      "git_commit": "ab12..." | null,
      "created_at": "2025-01-01T12:00:00+00:00",
      # optional:
      "experiment": "paper_fmow",
      "variants": {"best": {split: {metric: value}}, "last": {...}, "swa": {...},
                   "ema": {...}, "wise_ft_0.5": {...}}
    }

``metrics`` always holds the *headline* model, the one named by
``selection["variant"]`` (``"selected"`` when absent). A run that evaluated several
weight variants (best/last epoch, SWA, EMA, WiSE-FT alphas) also stores all of them in
``variants``; the headline variant must then appear there with identical numbers, so a
reader of ``metrics`` and a reader of ``variants`` never disagree. Metric names are
WILDS's own (``acc_avg``, ``acc_worst_region``, ``F1-macro_all`` ...). Non-finite
floats are stored as ``null`` so the file stays strict JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import numbers
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RUN_RECORD_REQUIRED",
    "RESULT_FILE",
    "PREDICTION_COLUMNS",
    "TIDY_COLUMNS",
    "collect_versions",
    "git_commit",
    "utc_now",
    "make_run_record",
    "validate_run_record",
    "to_jsonable",
    "write_run_record",
    "read_run_record",
    "run_is_done",
    "write_predictions",
    "read_predictions",
    "load_runs",
    "runs_wide",
    "mean_ci",
    "summarise",
    "paired_comparison",
]

RESULT_FILE = "result.json"
RUN_RECORD_REQUIRED = (
    "run_id", "dataset", "root_dir", "method", "fraction", "seed",
    "params", "metrics", "selection", "timings", "versions", "git_commit", "created_at",
)
PREDICTION_COLUMNS = ("idx", "y_true", "y_pred", "p_top1")
DEFAULT_VARIANT = "selected"
TIDY_COLUMNS = (
    "run_id", "experiment", "dataset", "method", "fraction", "seed", "lr",
    "variant", "headline", "split", "metric", "value",
)

# distribution name -> key in the versions dict
_VERSION_PACKAGES = {
    "torch": "torch", "open-clip-torch": "open_clip", "wilds": "wilds",
    "clipdg-nb": "clipdg_nb", "torchvision": "torchvision", "numpy": "numpy",
    "pandas": "pandas",
}


# ---------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------


def collect_versions() -> dict[str, str | None]:
    """Python and key library versions (``None`` for a package that is not installed).

    Read from package metadata, so it does not import torch or wilds.
    """
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist, key in _VERSION_PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD commit of the git checkout containing ``path`` (default: this package).

    Any failure (git missing, not a checkout, no commits yet, timeout) gives ``None``:
    provenance must never stop a run.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--verify", "--quiet", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and sha else None


def utc_now() -> str:
    """Current UTC time as ISO 8601 with offset, e.g. ``2025-01-01T12:00:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_run_record(**fields: Any) -> dict[str, Any]:
    """A run record with provenance filled in: ``versions``, ``git_commit``, ``created_at``
    (unless given), and empty ``selection``/``timings`` defaults. Other keys as given."""
    record = {"selection": {}, "timings": {}, **fields}
    record.setdefault("versions", collect_versions())
    record.setdefault("git_commit", git_commit())
    record.setdefault("created_at", utc_now())
    return record


# ---------------------------------------------------------------------------
# JSON conversion and validation
# ---------------------------------------------------------------------------


def to_jsonable(obj: Any, _where: str = "record") -> Any:
    """Convert numpy/torch scalars and arrays, paths, dataclasses, tuples to plain JSON.

    Non-finite floats become ``None`` (strict JSON). Unknown objects raise a TypeError
    naming where in the record they sit.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                # JSON keys are strings; int keys would silently come back as "0".
                raise TypeError(f"{_where} has non-string key {k!r}; use string keys")
            out[k] = to_jsonable(v, f"{_where}[{k!r}]")
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), _where)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, _where)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        # numpy scalars/arrays and torch tensors (0-d -> Python scalar) without importing torch
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        return to_jsonable(obj.tolist(), _where)
    raise TypeError(
        f"{_where} is a {type(obj).__name__}, which cannot be stored in JSON; "
        "convert it to a number, string, list or dict"
    )


def _check_metric_table(table: Any, where: str) -> None:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be a dict {{split: {{metric: value}}}}, got {type(table).__name__}")
    for split, metrics in table.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"{where}[{split!r}] must be a dict {{metric: value}}")
        for name, value in metrics.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ValueError(
                    f"{where}[{split!r}][{name!r}] must be a number, got {value!r}"
                )


def validate_run_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError naming missing keys or a malformed field (after to_jsonable)."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    missing = [k for k in RUN_RECORD_REQUIRED if k not in record]
    if missing:
        raise ValueError(
            f"run record is missing required key(s) {missing}; required are "
            f"{list(RUN_RECORD_REQUIRED)} (make_run_record fills versions/git_commit/created_at)"
        )
    if not isinstance(record["run_id"], str) or not record["run_id"]:
        raise ValueError(f"run_id must be a non-empty string, got {record['run_id']!r}")
    for key in ("params", "selection", "timings", "versions"):
        if not isinstance(record[key], Mapping):
            raise ValueError(f"{key} must be a dict, got {type(record[key]).__name__}")
    _check_metric_table(record["metrics"], "metrics")
    variants = record.get("variants")
    if variants is not None:
        if not isinstance(variants, Mapping):
            raise ValueError("variants must be a dict {variant: {split: {metric: value}}}")
        for name, table in variants.items():
            _check_metric_table(table, f"variants[{name!r}]")
        headline = record["selection"].get("variant", DEFAULT_VARIANT)
        if headline not in variants:
            raise ValueError(
                f"variants has no entry for the headline variant {headline!r} "
                "(selection['variant']); add it, or set selection['variant']"
            )
        if to_jsonable(variants[headline]) != to_jsonable(record["metrics"]):
            raise ValueError(
                f"metrics differ from variants[{headline!r}]; metrics must be the headline variant"
            )


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable on POSIX; best effort elsewhere.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(target: Path, write) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``target``, fsync, then os.replace.

    The temp file lives in the same folder so ``os.replace`` is an atomic rename; on any
    error it is removed and ``target`` keeps its previous content.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return target


def write_run_record(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Validate ``record``, convert it to plain JSON and write ``run_dir/result.json`` atomically."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    missing = [k for k in RUN_RECORD_REQUIRED if k not in record]
    if missing:  # before conversion, so the message names keys rather than a type problem
        raise ValueError(
            f"run record is missing required key(s) {missing}; required are "
            f"{list(RUN_RECORD_REQUIRED)} (make_run_record fills versions/git_commit/created_at)"
        )
    plain = to_jsonable(record)
    validate_run_record(plain)
    data = json.dumps(plain, indent=2, sort_keys=False, allow_nan=False).encode("utf-8") + b"\n"
    return _atomic_write(Path(run_dir) / RESULT_FILE, lambda f: f.write(data))


def read_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run record; ``path`` is a run folder or the ``result.json`` itself."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_is_done(run_dir: str | os.PathLike, params: Mapping[str, Any] | None = None) -> bool:
    """True when ``run_dir/result.json`` exists, parses, and (if given) holds these ``params``.

    ``params`` are compared after the same JSON conversion the writer applies, so tuples vs
    lists or numpy scalars do not cause needless reruns. A corrupt file counts as not done.
    """
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return False
    try:
        record = read_run_record(path)
    except (OSError, ValueError) as exc:
        warnings.warn(f"{path} is unreadable ({exc}); treating the run as not done", stacklevel=2)
        return False
    if params is None:
        return True
    return record.get("params") == to_jsonable(params)


# ---------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------


def _check_split_name(split: str) -> None:
    if not isinstance(split, str) or not split or "/" in split or "\\" in split or split.startswith("."):
        raise ValueError(f"split must be a plain name like 'id_val' or 'test', got {split!r}")


def _validate_predictions(df: pd.DataFrame) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions are missing column(s) {missing}; need {list(PREDICTION_COLUMNS)}")
    for col in ("idx", "y_true", "y_pred"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise ValueError(f"predictions column {col!r} must be integer, got {df[col].dtype}")
    if df["idx"].duplicated().any():
        raise ValueError("predictions column 'idx' has duplicates; one row per example")
    p = df["p_top1"]
    if not pd.api.types.is_float_dtype(p) or not ((p >= 0) & (p <= 1)).all():
        raise ValueError("predictions column 'p_top1' must be floats in [0, 1] (no NaN)")


def write_predictions(run_dir: str | os.PathLike, split: str, df: pd.DataFrame) -> Path:
    """Write ``run_dir/predictions/<split>.parquet`` atomically after checking its columns."""
    _check_split_name(split)
    _validate_predictions(df)
    target = Path(run_dir) / "predictions" / f"{split}.parquet"
    return _atomic_write(target, lambda f: df.to_parquet(f, index=False))


def read_predictions(run_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    """Read the predictions of one split written by :func:`write_predictions`."""
    _check_split_name(split)
    return pd.read_parquet(Path(run_dir) / "predictions" / f"{split}.parquet")


# ---------------------------------------------------------------------------
# tidy tables
# ---------------------------------------------------------------------------


def _record_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    params = record.get("params") or {}
    headline = (record.get("selection") or {}).get("variant", DEFAULT_VARIANT)
    variants = record.get("variants") or {headline: record["metrics"]}
    base = {
        "run_id": record["run_id"],
        "experiment": record.get("experiment", params.get("experiment")),
        "dataset": record["dataset"],
        "method": record["method"],
        "fraction": record["fraction"],
        "seed": record["seed"],
        "lr": params.get("lr"),
    }
    rows = []
    for variant, table in variants.items():
        for split, metrics in table.items():
            for metric, value in metrics.items():
                rows.append({
                    **base, "variant": variant, "headline": variant == headline,
                    "split": split, "metric": metric,
                    "value": np.nan if value is None else float(value),
                })
    return rows


def load_runs(root: str | os.PathLike, pattern: str = "*/result.json") -> pd.DataFrame:
    """All run records under ``root`` as one tidy frame: a row per (run, variant, split, metric).

    Columns are ``TIDY_COLUMNS``. ``headline`` marks the variant reported in ``metrics``
    (filter on it for one number per run). Folders without ``result.json`` are skipped;
    unreadable or invalid records are skipped with a warning naming the file.
    """
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(root).glob(pattern)):
        try:
            record = read_run_record(path)
            validate_run_record(record)
        except (OSError, ValueError, TypeError) as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            continue
        rows.extend(_record_rows(record))
    df = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    return df.astype({"value": float})


def runs_wide(
    df: pd.DataFrame,
    index: Sequence[str] = ("run_id", "experiment", "dataset", "method", "fraction", "seed", "lr", "variant"),
) -> pd.DataFrame:
    """Pivot a tidy frame so each ``split/metric`` becomes a column, one row per run variant."""
    index = [c for c in index if c in df.columns]
    col = df["split"].astype(str) + "/" + df["metric"].astype(str)
    wide = df.assign(_col=col).set_index(index + ["_col"])["value"]
    if wide.index.duplicated().any():
        raise ValueError("duplicate (run, split, metric) rows; did two records share a run_id?")
    out = wide.unstack("_col").reset_index()
    out.columns.name = None
    return out


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


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
