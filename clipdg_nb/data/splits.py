"""Splits: one list of WILDS split names for the whole package, a split's indices, seeded nested
subsets, metadata columns and their readable group names."""
from __future__ import annotations

import zlib

import numpy as np

from .spec import ALL_SPLITS

# One split vocabulary for every dataset (WILDS's own names): ID = the training domains. A dataset
# has some of them (its spec's `splits`; Camelyon17, e.g., has no id_test).
SPLITS = ALL_SPLITS
SPLIT_TITLES = {"train": "train", "id_val": "ID val", "id_test": "ID test", "val": "OOD val", "test": "OOD test"}
VALIDATION_SPLITS = ("id_val", "val")
TEST_SPLITS = ("id_test", "test")
EVAL_SPLITS = tuple(s for s in SPLITS if s != "train")


def split_indices(dataset, split: str) -> np.ndarray:
    """Indices (into the full WILDS dataset) of one split, ascending."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {list(SPLITS)}")
    if split not in dataset.split_dict:
        raise ValueError(f"split={split!r}: WILDS's {dataset.dataset_name} has no such split; "
                         f"it has {list(dataset.split_dict)}")
    return np.flatnonzero(np.asarray(dataset.split_array) == dataset.split_dict[split])


def subset_rows(pool: np.ndarray, indices, split: str = "the split") -> np.ndarray:
    """Positions of `indices` (full-dataset ids) within a split's ascending index array `pool`."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = np.searchsorted(pool, indices)
    ok = (rows < len(pool)) & (pool[np.minimum(rows, len(pool) - 1)] == indices)
    if not ok.all():
        raise ValueError(f"indices {indices[~ok][:5].tolist()} are not in {split}")
    return rows


def fraction_indices(dataset, fraction: float, seed: int, stratify: bool = False, split: str = "train") -> np.ndarray:
    """A seeded subset holding `fraction` of `split` (full-dataset indices, ascending). Subsets of one seed
    are nested: prefixes of one permutation (per class with `stratify`, which keeps >= 1 example of every
    class). PCG64 seeded from integers is the same on every platform; the dataset name keys the draws."""
    pool = split_indices(dataset, split)
    key = zlib.crc32(dataset.dataset_name.encode())
    if not stratify:
        order = pool[np.random.default_rng([seed, key, 0]).permutation(len(pool))]
        return np.sort(order[: max(1, round(fraction * len(pool)))])
    labels = np.asarray(dataset.y_array)[pool]
    chosen = []
    for label in np.unique(labels):
        members = pool[labels == label]
        order = members[np.random.default_rng([seed, key, int(label) + 1]).permutation(len(members))]
        chosen.append(order[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


def metadata_column(dataset, field: str) -> np.ndarray:
    if field not in dataset.metadata_fields:
        raise ValueError(f"metadata field {field!r} not in {dataset.metadata_fields}")
    return np.asarray(dataset.metadata_array[:, dataset.metadata_fields.index(field)])


def group_labels(dataset, field: str, values) -> list[str]:
    """Readable names of metadata values: regions and years for FMoW, location ids for iWildCam."""
    mapping = (dataset.metadata_map or {}).get(field)
    return [str(mapping[int(v)]) if mapping is not None and 0 <= int(v) < len(mapping) else str(int(v))
            for v in values]
