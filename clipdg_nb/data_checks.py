"""A WILDS folder checked at the door: the files and columns the loader reads, before it reads them,
and what the loaded tables promise about the images, right after (no image is opened).

Each check costs almost nothing, because the data is loaded in every notebook run: a CSV's header
line, and three `stat` calls for FMoW's row-addressed images (the folder is listed only to word an
error). A check that fails raises `DatasetFormatError`, naming the file, what is wrong with it and
what to do. The columns are exactly those wilds 2.0.0's loaders read (`fmow_dataset.py`,
`iwildcam_dataset.py`); a column they read that is missing would otherwise be a bare pandas
`KeyError` from inside WILDS, and a removed FMoW row no error at all (see `check_loaded`).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

REQUIRED_COLUMNS = {
    "fmow": {
        "rgb_metadata.csv": ("split", "category", "country_code", "timestamp"),
        "country_code_mapping.csv": ("alpha-3", "region"),
    },
    "iwildcam": {
        "metadata.csv": ("split", "filename", "y", "location_remapped", "sequence_remapped", "datetime"),
    },
}
METADATA_FILE = {"fmow": "rgb_metadata.csv", "iwildcam": "metadata.csv"}
SPLIT_NAMES = ("train", "id_val", "id_test", "val", "test")


class DatasetFormatError(ValueError):
    """A WILDS folder is there but does not hold what the loader reads; the message names the file."""


def remedy(folder: Path) -> str:
    return (f"Replace {folder} with a fresh download (move it aside, then load with download=True), or "
            f"write a synthetic copy with `clipdg synth --root {folder.parent}`.")


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (its first line only), as pandas would read them."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh), [])


def check_files(name: str, folder: Path) -> None:
    """Before the loader: every CSV it reads exists and has every column it reads."""
    for file, columns in REQUIRED_COLUMNS[name].items():
        path = folder / file
        if not path.is_file():
            raise DatasetFormatError(f"{path} is missing; WILDS's {name} loader reads it. {remedy(folder)}")
        try:
            header = csv_header(path)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DatasetFormatError(f"{path} is not a readable CSV file ({type(e).__name__}: {e}). "
                                     f"{remedy(folder)}") from e
        missing = [c for c in columns if c not in header]
        if missing:
            found = f"its columns are {header}" if header else "the file is empty"
            raise DatasetFormatError(
                f"{path} lacks the column(s) {missing} that WILDS's {name} loader reads ({found}; it needs "
                f"{list(columns)}). {remedy(folder)}")


def loader_failure(name: str, folder: Path, error: Exception) -> DatasetFormatError:
    """WILDS's loader raised on values (not columns): the error in words, naming the files it read."""
    files = ", ".join(str(folder / f) for f in REQUIRED_COLUMNS[name])
    hint = {"fmow": "e.g. a category that is not one of FMoW's 62, or a timestamp that is not ISO 8601",
            "iwildcam": "e.g. a split name other than train / val / test / id_val / id_test, a datetime not "
                        "written as 2013-01-01 00:00:00.000, or labels y, location_remapped or sequence_remapped "
                        "that do not run 0, 1, ... without gaps (the loader asserts that)"}[name]
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    gaps = _label_gaps(folder / METADATA_FILE[name]) if name == "iwildcam" and isinstance(error, AssertionError) else ""
    return DatasetFormatError(f"WILDS's {name} loader could not read {files} ({detail}{gaps}): a value in the "
                              f"metadata is not what it expects ({hint}). {remedy(folder)}")


def _label_gaps(path: Path) -> str:
    """Which of iWildCam's id columns skip values (read only once the loader has failed)."""
    import pandas as pd
    try:
        frame = pd.read_csv(path, usecols=["y", "location_remapped", "sequence_remapped"])
    except (OSError, ValueError):
        return ""
    found = []
    for column in frame.columns:
        values = np.unique(frame[column].to_numpy())
        absent = np.setdiff1d(np.arange(int(values.max()) + 1), values) if len(values) else []
        if len(absent):
            found.append(f"{column} never takes the value(s) {absent[:5].tolist()}{' ...' if len(absent) > 5 else ''}")
    return f"; {'; '.join(found)}" if found else ""


def check_loaded(name: str, dataset, folder: Path, n_classes: int) -> None:
    """After the loader: the images the tables point at are there, every split is non-empty, and
    the label space is the benchmark's."""
    if name == "fmow":
        _check_fmow_images(dataset, folder)
    else:
        _check_iwildcam_images(dataset, folder)
    split_array = np.asarray(dataset.split_array)
    empty = [s for s in SPLIT_NAMES if not (split_array == dataset.split_dict[s]).any()]
    if empty:
        raise DatasetFormatError(
            f"{folder / METADATA_FILE[name]} gives no rows to the split(s) {empty} (WILDS assigns splits from "
            f"its 'split' column{' and the timestamps' if name == 'fmow' else ''}). {remedy(folder)}")
    if int(dataset.n_classes) != n_classes:
        raise DatasetFormatError(
            f"{folder / METADATA_FILE[name]} has labels for {int(dataset.n_classes)} classes, but {folder.name} has "
            f"{n_classes}: the class names and prompts would not match the labels. {remedy(folder)}")


def _check_fmow_images(dataset, folder: Path) -> None:
    """FMoW addresses images by row: row i of rgb_metadata.csv is images/rgb_img_{i}.png. A removed
    or added row shifts every later label onto another image, so the row count must equal the
    image count. Three stats decide it (the first and last row's images exist, none beyond); the
    folder (523,846 files in the real release) is listed only to word the error."""
    n_rows = len(dataset.metadata)
    images = folder / "images"
    first, last, beyond = (images / f"rgb_img_{i}.png" for i in (0, n_rows - 1, n_rows))
    problems = [f"{p.name} is missing" for p in (first, last) if not p.is_file()]
    if beyond.exists():
        problems.append(f"{beyond.name} exists")
    if problems:
        try:
            n_images = sum(1 for e in os.scandir(images) if e.name.startswith("rgb_img_") and e.name.endswith(".png"))
        except OSError:
            n_images = 0
        raise DatasetFormatError(
            f"{folder / 'rgb_metadata.csv'} has {n_rows} rows but {images} holds {n_images} images "
            f"({'; '.join(problems)}). WILDS finds row i's image at images/rgb_img_{{i}}.png, so rows and images "
            f"must match one to one: with a row removed or added every later image would get another row's "
            f"label. {remedy(folder)}")


def _check_iwildcam_images(dataset, folder: Path) -> None:
    """iWildCam names each image in metadata.csv's `filename` column (under train/): the first and
    last exist (a missing one in between is named when it is decoded)."""
    names = np.asarray(dataset._input_array)
    missing = [folder / "train" / str(names[i]) for i in {0, len(names) - 1}
               if not (folder / "train" / str(names[i])).is_file()]
    if missing:
        raise DatasetFormatError(
            f"{folder / 'metadata.csv'} names images that are not there: {', '.join(map(str, sorted(missing)))} "
            f"(WILDS reads train/<filename>). {remedy(folder)}")
