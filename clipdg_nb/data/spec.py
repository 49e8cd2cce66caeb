"""What a WILDS dataset is to this package: one `DatasetSpec`, the `SPEC` of its module (`fmow.py`, ...).
Nothing here imports torch or wilds; a spec missing a required field fails at import, naming it."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Callable, Mapping
from pathlib import Path

import numpy as np

# WILDS's split names (every dataset uses a subset of them): ID = the training domains.
ALL_SPLITS = ("train", "id_val", "id_test", "val", "test")
ID_SPLITS = ("train", "id_val", "id_test")
_MISSING = object()


class SpecError(TypeError):
    """A dataset spec lacks a required field or has one of the wrong kind."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the package needs to know about one WILDS dataset (paths relative to its folder)."""
    name: str = _MISSING  # WILDS's `dataset_name`; the folder is `<name>_v<version>`
    version: str = _MISSING
    loader: str = _MISSING  # a class of `data.wilds_compat`, or a dotted path to one (imported only when loading)
    splits: tuple = _MISSING  # the WILDS splits it has under its official scheme, in order
    required_columns: Mapping[str, tuple] = _MISSING  # {file: columns} the loader reads, checked before it reads
    metadata_file: str = _MISSING  # the CSV whose rows are the images (named in errors)
    image_paths: Callable = _MISSING  # (loaded dataset, indices) -> the files its `get_input` opens
    class_names: Callable = _MISSING  # (folder or None) -> names in label order (its own files where given)
    sampler_field: str = _MISSING  # the metadata group the uniform-over-groups sampler balances
    eval_groups: tuple = _MISSING  # metadata fields reported per group, in display order
    id_metric: str = _MISSING  # WILDS's headline metric on the ID splits
    ood_metric: str = _MISSING  # ... and on the OOD ones
    n_classes: int = _MISSING
    download_gb: float = _MISSING
    real_size: tuple = _MISSING  # (width, height) of the release's images (the synthetic `real` profile's)
    # (loaded dataset, folder) -> None, raising `DatasetFormatError` when the tables point at images that
    # are not there (a few `stat`s); None: the images of the first and last rows exist
    check_images: Callable | None = None
    value_hint: str = ""  # what a bad metadata value typically is (worded into loader failures)
    diagnose: Callable | None = None  # (folder, error) -> extra words for a loader failure
    split_rule: str = "its 'split' column"  # how WILDS assigns rows to splits (for the empty-split error)
    select_split: str = "id_val"  # the validation split choices are made on by default
    in_demo: bool = False  # part of the offline default (`clipdg synth` and the demo)

    def __post_init__(self):
        label = self.name if isinstance(self.name, str) else "<unnamed>"
        for f in fields(self):
            if getattr(self, f.name) is _MISSING:
                raise SpecError(f"dataset spec {label!r} lacks the required field {f.name!r} (see clipdg_nb/data/spec.py)")
        unknown = [s for s in self.splits if s not in ALL_SPLITS]
        if unknown or "train" not in self.splits:
            raise SpecError(f"dataset spec {label!r}: splits {list(self.splits)} must include 'train' and use only "
                            f"WILDS's names {list(ALL_SPLITS)}")
        if self.select_split not in self.splits or self.select_split not in ("id_val", "val"):
            raise SpecError(f"dataset spec {label!r}: select_split={self.select_split!r} must be a validation split "
                            f"it has (id_val or val; its splits are {list(self.splits)})")

    @property
    def folder(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def release_marker(self) -> str:
        """The file WILDS writes last into a complete download (and checks before downloading again)."""
        return f"RELEASE_v{self.version}.txt"

    @property
    def eval_splits(self) -> tuple:
        """The splits evaluated by default: every split it has but train."""
        return tuple(s for s in self.splits if s != "train")

    def headline_metric(self, split: str) -> str:
        return self.id_metric if split in ID_SPLITS else self.ood_metric

    def templates(self, kind: str = "paper") -> list[str]:
        """Prompt templates (`kind`: one of `prompts.TEMPLATE_SETS`), `{c}` for the class name."""
        from .prompts import TEMPLATE_SETS, TEMPLATES_FILE
        if kind not in TEMPLATE_SETS:
            raise ValueError(f"templates={kind!r} is unknown; choose one of {list(TEMPLATE_SETS)}")
        table = json.loads(TEMPLATES_FILE.read_text())
        if self.name not in table:
            raise ValueError(f"{TEMPLATES_FILE} has no templates for dataset {self.name!r}: add a '{self.name}' "
                             f"entry with the sets {list(TEMPLATE_SETS)}")
        return list(table[self.name][kind])


def metadata_csv_paths(rule: Callable, **read_csv) -> Callable:
    """The image path rule of loaders whose `get_input` opens `data_dir / rule(row)` for row idx of
    their `metadata.csv` (read here through `dataset.data_dir`, WILDS's public folder, in the
    loader's row order; `read_csv`: the loader's own pandas options)."""
    read: dict = {}  # the last table read, by the file's stat: one image's path must not cost a CSV read

    def paths(dataset, indices) -> list[str]:
        import pandas as pd

        csv = Path(dataset.data_dir) / "metadata.csv"
        key = (str(csv.resolve()), (st := csv.stat()).st_size, st.st_mtime_ns, st.st_ino)
        if key not in read:
            read.clear()
            read[key] = pd.read_csv(csv, **read_csv)
        return [rule(row) for row in read[key].iloc[np.asarray(indices)].itertuples(index=False)]
    return paths
