"""The WILDS datasets: every per-dataset fact is its module's `SPEC` (`fmow.py`, ...), collected in
`DATASETS` (a new dataset: one module plus its line in `_MODULES`). Synthetic and real data load through
the real `wilds` loader (with `wilds_compat`'s shims). Nothing heavy is imported here."""
from __future__ import annotations

import os
from pathlib import Path

from . import camelyon17, checks, fmow, iwildcam
from .checks import DatasetFormatError
from .prompts import TEMPLATE_SETS, prompt_functions, render_prompt  # noqa: F401
from .samplers import SAMPLERS, EpochShuffleSampler, GroupUniformSampler  # noqa: F401
from .spec import ID_SPLITS, DatasetSpec  # noqa: F401
from .splits import (EVAL_SPLITS, SPLIT_TITLES, SPLITS, TEST_SPLITS, VALIDATION_SPLITS, fraction_indices,  # noqa: F401
                     group_labels, metadata_column, split_indices)

_MODULES = (fmow, iwildcam, camelyon17)
DATASETS: dict[str, DatasetSpec] = {m.SPEC.name: m.SPEC for m in _MODULES}
DEMO_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.in_demo)  # the offline default's
GROUP_FIELDS = tuple(dict.fromkeys(f for spec in DATASETS.values() for f in spec.eval_groups))



def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not supported; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def headline_metric(dataset: str, split: str) -> str:
    """The benchmark's number for a split: the ID metric on train/id_val/id_test, the OOD one on val/test."""
    return dataset_spec(dataset).headline_metric(split)


def data_present(root_dir: str | os.PathLike, name: str) -> bool:
    """`<root_dir>/<name>_v<version>/RELEASE_v<version>.txt` exists: the marker WILDS (and the synthetic
    writer) writes last into a complete copy."""
    spec = dataset_spec(name)
    return (Path(root_dir).expanduser() / spec.folder / spec.release_marker).is_file()


def dataset_splits(name: str, requested) -> tuple:
    """The evaluated splits: `requested`, where the default `EVAL_SPLITS` means the dataset's own defaults
    (Camelyon17 has no id_test); a split it lacks, asked for by name, is an error naming those it has."""
    spec = dataset_spec(name)
    requested = tuple(requested)
    if requested == EVAL_SPLITS:
        return spec.eval_splits
    lacking = [s for s in requested if s in SPLITS and s not in spec.splits]
    if lacking:
        raise ValueError(f"eval_splits={list(requested)!r}: dataset {name!r} has no split(s) {lacking}; "
                         f"WILDS's {spec.folder} has {list(spec.splits)}")
    return requested


def check_select_split(name: str, split) -> None:
    """Choices are made on a validation split the dataset has (DatasetSpec.select_split: its own)."""
    spec = dataset_spec(name)
    if split not in VALIDATION_SPLITS or split not in spec.splits:
        raise ValueError(f"select_split={split!r}: choices are made on a validation split of {name!r} "
                         f"({[s for s in VALIDATION_SPLITS if s in spec.splits]}), never on a test split; "
                         f"{name!r} chooses on select_split={spec.select_split!r}")


CLASS_NAMES_FILE = "class_names.csv"  # in a dataset folder: rows `y,name` renaming those classes


def class_names(name: str, data=None) -> list[str]:
    """Readable class names in WILDS label order (the prompts'). With `data` (a loaded dataset or its folder)
    the dataset's own files name them (iWildCam's categories.csv), and a `class_names.csv` there (y,name;
    the classes to rename) overrides them: a top-level file, so part of the data fingerprint and run ids."""
    spec = dataset_spec(name)
    folder = None if data is None else Path(getattr(data, "data_dir", data))
    names = list(spec.class_names(folder))
    override = None if folder is None else folder / CLASS_NAMES_FILE
    if override is None or not override.is_file():
        return names
    import pandas as pd
    try:
        table = pd.read_csv(override, dtype={"name": str}, keep_default_na=False)
        ys, given = table["y"].astype(int), table["name"].str.strip()
        bad = sorted(set(ys[ys.duplicated() | ~ys.between(0, len(names) - 1) | (given == "")]))
        if bad:
            raise ValueError(f"the rows for y={bad} are outside [0, {len(names)}), repeated or without a name")
    except (OSError, ValueError, KeyError) as e:
        raise DatasetFormatError(f"{override}: {e}; write one row `y,name` (columns y,name) per class to rename, "
                                 "or remove the file") from e
    return [dict(zip(ys, given)).get(y, n) for y, n in enumerate(names)]


def prompt_templates(name: str, kind: str = "paper") -> list[str]:
    """A registered dataset's templates (`kind`: one of TEMPLATE_SETS), with `{c}` for the class name."""
    return dataset_spec(name).templates(kind)


class DatasetNotFoundError(FileNotFoundError):
    """The WILDS folder is missing; the message says where it was expected and how to get it."""


def load_dataset(name: str, root_dir: str | os.PathLike = "data", download: bool = False):
    """Load a registered dataset through the real WILDS loader, the folder checked at the door (`checks`):
    a missing file or column, or rows that no longer match their images, raise `DatasetFormatError`."""
    import importlib

    spec = dataset_spec(name)
    root = Path(root_dir).expanduser()
    folder = root / spec.folder
    present = data_present(root, name)
    if not download and not present:
        raise DatasetNotFoundError(
            f"WILDS dataset '{name}' not found: expected {folder} with {spec.release_marker} inside "
            f"(root_dir={str(root_dir)!r}, resolved from {Path.cwd()}). Point root_dir at the folder that holds "
            f"'{spec.folder}', write a small synthetic copy with `clipdg synth --root {root}`, or pass "
            f"download=True to fetch the real data ({spec.download_gb:.1f} GB).")
    if present:  # a folder WILDS will not download into: checked at the door (checks.py)
        checks.check_files(spec, folder)
    try:
        module, _, loader = spec.loader.rpartition(".")  # a dotted path, or a class of our shims
        loader = getattr(importlib.import_module(module or "clipdg_nb.data.wilds_compat"), loader)
        dataset = loader(version=spec.version, root_dir=str(root), download=download)
    except (KeyError, ValueError, AssertionError, TypeError, IndexError) as e:  # WILDS's own, on bad values
        raise checks.loader_failure(spec, folder, e) from e
    checks.check_loaded(spec, dataset, folder)
    return dataset
