"""Readable summaries of a loaded WILDS dataset: what is in each split."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import SPLIT_TITLES, SPLITS, dataset_spec, group_labels, metadata_column, split_indices


def split_summary(dataset) -> pd.DataFrame:
    """One row per split: size, classes present, and the groups (regions / locations, years) it holds."""
    spec = dataset_spec(dataset.dataset_name)
    y = np.asarray(dataset.y_array)
    rows = []
    for split in SPLITS:
        idx = split_indices(dataset, split)
        row = {"split": split, "title": SPLIT_TITLES[split], "n": len(idx),
               "classes": int(len(np.unique(y[idx])))}
        for field in spec.eval_groups:
            values = metadata_column(dataset, field)[idx]
            uniq = np.unique(values)
            names = group_labels(dataset, field, uniq)
            row[field] = (", ".join(names) if len(names) <= 6 else f"{len(names)} {field}s")
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(name: str, dataset) -> str:
    table = split_summary(dataset)
    return f"{name} ({dataset.data_dir}): {len(dataset)} images, {dataset.n_classes} classes\n" + table.to_string(index=False)
