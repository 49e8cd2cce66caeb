"""A WILDS folder checked at the door: the files and columns the loader reads (the spec's
`required_columns`), before it reads them, and what the loaded tables promise about the images, right
after. Cheap enough for every run (a CSV header, a few `stat`s); a failure raises `DatasetFormatError`
naming the file, the problem and the remedy."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class DatasetFormatError(ValueError):
    """A WILDS folder is there but does not hold what the loader reads; the message names the file."""


def remedy(folder: Path) -> str:
    return (f"Replace {folder} with a fresh download (move it aside, then load with download=True), or "
            f"write a synthetic copy with `clipdg synth --root {folder.parent}`.")


def check_files(spec, folder: Path) -> None:
    """Before the loader: every CSV it reads exists and has every column it reads."""
    for file, columns in spec.required_columns.items():
        path = folder / file
        if not path.is_file():
            raise DatasetFormatError(f"{path} is missing; WILDS's {spec.name} loader reads it. {remedy(folder)}")
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:  # the first line, as pandas reads it
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DatasetFormatError(f"{path} is not a readable CSV file ({type(e).__name__}: {e}). "
                                     f"{remedy(folder)}") from e
        missing = [c for c in columns if c not in header]
        if missing:
            found = f"its columns are {header}" if header else "the file is empty"
            raise DatasetFormatError(
                f"{path} lacks the column(s) {missing} that WILDS's {spec.name} loader reads ({found}; it needs "
                f"{list(columns)}). {remedy(folder)}")


class LoaderIncompatibleError(ValueError):
    """WILDS's loader fails on this machine's libraries whatever the files hold (not a format error)."""


def loader_failure(spec, folder: Path, error: Exception) -> ValueError:
    """WILDS's loader raised on values (not columns): the error in words, naming the files it read, or
    naming the library incompatibility when the loader cannot run on today's pandas at all."""
    files = ", ".join(str(folder / f) for f in spec.required_columns)
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, ValueError) and "read-only" in str(error):
        # pandas >= 3 (Copy-on-Write) hands out `Series.values` read-only; wilds 2.0.0 loaders such as
        # RxRx1's write split ids into them. The files are fine: no download would help.
        import traceback

        import pandas as pd

        where = traceback.extract_tb(error.__traceback__)[-1]
        return LoaderIncompatibleError(
            f"WILDS's {spec.name} loader ({spec.loader}) cannot run on pandas {pd.__version__}: it writes into an "
            f"array pandas >= 3 makes read-only (Copy-on-Write) at {where.filename}:{where.lineno} ({detail}). "
            f"This is not a problem of {files}. Load it through a subclass in clipdg_nb/data/wilds_compat.py that "
            f"builds those arrays writable (as CompatFMoW does for FMoW's timestamps), or use pandas < 3.")
    extra = spec.diagnose(folder, error) if spec.diagnose is not None else ""
    return DatasetFormatError(f"WILDS's {spec.name} loader could not read {files} ({detail}{extra}): a value in the "
                              f"metadata is not what it expects ({spec.value_hint}). {remedy(folder)}")


def check_loaded(spec, dataset, folder: Path) -> None:
    """After the loader: the images the tables point at are there, every split is non-empty, and
    the label space is the benchmark's."""
    if spec.check_images is not None:
        spec.check_images(dataset, folder)
    else:
        check_first_and_last(spec, dataset, folder)
    split_array = np.asarray(dataset.split_array)
    empty = [s for s in spec.splits if not (split_array == dataset.split_dict[s]).any()]
    if empty:
        raise DatasetFormatError(
            f"{folder / spec.metadata_file} gives no rows to the split(s) {empty} (WILDS assigns splits from "
            f"{spec.split_rule}). {remedy(folder)}")
    if int(dataset.n_classes) != spec.n_classes:
        raise DatasetFormatError(
            f"{folder / spec.metadata_file} has labels for {int(dataset.n_classes)} classes, but {folder.name} has "
            f"{spec.n_classes}: the class names and prompts would not match the labels. {remedy(folder)}")


def check_first_and_last(spec, dataset, folder: Path) -> None:
    """The images of the first and last rows exist (a missing one between is named when it is decoded)."""
    n = len(dataset)
    paths = spec.image_paths(dataset, sorted({0, n - 1}))
    missing = [folder / p for p in paths if not (folder / p).is_file()]
    if missing:
        raise DatasetFormatError(
            f"{folder / spec.metadata_file} names images that are not there: {', '.join(map(str, sorted(missing)))}. "
            f"{remedy(folder)}")
