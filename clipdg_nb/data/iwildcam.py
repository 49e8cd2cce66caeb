"""iWildCam2020-WILDS (`iwildcam_v2.0`): camera-trap photos of 182 species; shift to unseen traps.

Splits come from metadata.csv's `split` column (OOD val and test are camera locations training
never saw); reported per location; `F1-macro_all` on every split. Each image is named in
metadata.csv's `filename` column, under train/."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .spec import DatasetSpec, metadata_csv_paths

# The release's categories.csv (y, category_id, name: scientific names) plus an `english` column,
# the names the prompts use. WILDS ships no English names; this table is the translation.
ENGLISH_NAMES = Path(__file__).resolve().parent.parent / "data_files" / "iwildcam_labels.csv"


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: int(r["y"]))


def class_names(folder: Path | None = None) -> list[str]:
    """Readable names in label order (y -> category_id: the folder's own categories.csv, else the bundled
    copy of it), each category's English name from the bundled table, else its scientific name."""
    english = {r["category_id"]: r["english"] for r in _read(ENGLISH_NAMES)}
    own = None if folder is None else Path(folder) / "categories.csv"
    rows = _read(own) if own is not None and own.is_file() else _read(ENGLISH_NAMES)
    return [english.get(r["category_id"]) or r["name"] for r in rows]


image_paths = metadata_csv_paths(lambda row: f"train/{row.filename}", usecols=["filename"])  # IWildCamDataset.get_input


def label_gaps(folder: Path, error: Exception) -> str:
    """Which of iWildCam's id columns skip values (read only once the loader has failed an assert)."""
    if not isinstance(error, AssertionError):
        return ""
    import pandas as pd
    try:
        frame = pd.read_csv(folder / "metadata.csv", usecols=["y", "location_remapped", "sequence_remapped"])
    except (OSError, ValueError):
        return ""
    found = []
    for column in frame.columns:
        values = np.unique(frame[column].to_numpy())
        absent = np.setdiff1d(np.arange(int(values.max()) + 1), values) if len(values) else []
        if len(absent):
            found.append(f"{column} never takes the value(s) {absent[:5].tolist()}{' ...' if len(absent) > 5 else ''}")
    return f"; {'; '.join(found)}" if found else ""


SPEC = DatasetSpec(
    name="iwildcam", version="2.0", loader="wilds.datasets.iwildcam_dataset.IWildCamDataset",
    splits=("train", "id_val", "id_test", "val", "test"),
    required_columns={
        "metadata.csv": ("split", "filename", "y", "location_remapped", "sequence_remapped", "datetime"),
    },
    metadata_file="metadata.csv",
    image_paths=image_paths, class_names=class_names,
    sampler_field="location", eval_groups=("location",),
    id_metric="F1-macro_all", ood_metric="F1-macro_all",
    n_classes=182, download_gb=12.0,
    real_size=(1920, 1080),
    value_hint="e.g. a split name other than train / val / test / id_val / id_test, a datetime not "
               "written as 2013-01-01 00:00:00.000, or labels y, location_remapped or sequence_remapped "
               "that do not run 0, 1, ... without gaps (the loader asserts that)",
    diagnose=label_gaps,
    in_demo=True,
)
