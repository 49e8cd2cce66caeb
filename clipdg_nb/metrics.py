"""WILDS's official metrics for predictions on any subset of a dataset (names and numbers as
`dataset.eval`), plus per-group tables. No torch_scatter needed (see `wilds_compat`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .data import dataset_spec, group_labels, metadata_column


def _as_long(values) -> torch.Tensor:
    return torch.as_tensor(np.array(values, dtype=np.int64))


def wilds_metrics(dataset, indices, y_pred) -> dict[str, float]:
    """`dataset.eval` on predicted labels for the given full-dataset indices, as plain floats."""
    indices = np.array(indices, dtype=np.int64)  # a writable copy (parquet columns are read-only)
    if len(indices) != len(y_pred):
        raise ValueError(f"{len(indices)} indices but {len(y_pred)} predictions")
    results, _ = dataset.eval(_as_long(y_pred), _as_long(np.asarray(dataset.y_array)[indices]),
                              dataset.metadata_array[torch.as_tensor(indices)])
    return {k: float(v) for k, v in results.items()}


def group_table(dataset, indices, y_pred, fields=None) -> pd.DataFrame:
    """Accuracy (and count) per group value for each metadata field (FMoW region and year,
    iWildCam location), as a long table: field, group, n, acc."""
    spec = dataset_spec(dataset.dataset_name)
    indices = np.asarray(indices, dtype=np.int64)
    correct = np.asarray(y_pred) == np.asarray(dataset.y_array)[indices]
    rows = []
    for field in fields or spec.eval_groups:
        values = metadata_column(dataset, field)[indices]
        for value, name in zip(np.unique(values), group_labels(dataset, field, np.unique(values))):
            mask = values == value
            rows.append({"field": field, "group": name, "value": int(value), "n": int(mask.sum()),
                         "acc": float(correct[mask].mean())})
    return pd.DataFrame(rows, columns=["field", "group", "value", "n", "acc"])
