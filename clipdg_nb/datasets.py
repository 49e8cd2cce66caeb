"""The two WILDS benchmarks: one table of facts per dataset, loading, splits, subsets, samplers.

Every per-dataset fact (loader, version, group fields, headline metrics, class names, prompt
templates) sits in `DATASETS` and is read from there everywhere (WILDS `examples/configs/datasets.py`
does the same). Both benchmarks load through the real `wilds` loaders (with the shims of
`wilds_compat`), so a synthetic folder and the real 54 GB / 12 GB downloads take one code path.
Nothing heavy is imported at module level: analysis code reads the table without torch or wilds.
"""
from __future__ import annotations

import csv
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import data_checks
from .data_checks import DatasetFormatError  # noqa: F401  (re-exported: the error load_dataset raises)

# One split vocabulary for both datasets (WILDS's own names): ID = the training domains.
SPLITS = ("train", "id_val", "id_test", "val", "test")
SPLIT_TITLES = {"train": "train", "id_val": "ID val", "id_test": "ID test", "val": "OOD val", "test": "OOD test"}
VALIDATION_SPLITS = ("id_val", "val")
TEST_SPLITS = ("id_test", "test")
ID_SPLITS = ("train", "id_val", "id_test")
TEMPLATE_SETS = ("paper", "ensemble")  # paper: the study's single prompt; ensemble: CLIP's published set
DATA_FILES = Path(__file__).with_name("data_files")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that differs between FMoW and iWildCam."""
    name: str
    loader: str  # class in clipdg_nb.wilds_compat (imported when a dataset is loaded)
    version: str
    sampler_field: str  # the group the uniform-over-groups sampler balances (the study's choice)
    eval_groups: tuple  # metadata fields reported per group, in display order
    id_metric: str  # WILDS's headline metric on the ID splits
    ood_metric: str  # ... and on the OOD splits
    n_classes: int
    download_gb: float

    @property
    def folder(self) -> str:
        return f"{self.name}_v{self.version}"

    def headline_metric(self, split: str) -> str:
        return self.id_metric if split in ID_SPLITS else self.ood_metric

    def class_names(self) -> list[str]:
        return class_names(self.name)

    def templates(self, kind: str = "paper") -> list[str]:
        return prompt_templates(self.name, kind)


DATASETS = {
    "fmow": DatasetSpec("fmow", "CompatFMoW", "1.1", "region", ("region", "year"),
                        "acc_avg", "acc_worst_region", 62, 53.9),
    "iwildcam": DatasetSpec("iwildcam", "CompatIWildCam", "2.0", "location", ("location",),
                            "F1-macro_all", "F1-macro_all", 182, 12.0),
}
GROUP_FIELDS = tuple(dict.fromkeys(f for spec in DATASETS.values() for f in spec.eval_groups))


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not supported; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def headline_metric(dataset: str, split: str) -> str:
    """The benchmark's number for a split: the ID metric on train/id_val/id_test, the OOD one on val/test."""
    return dataset_spec(dataset).headline_metric(split)


class DatasetNotFoundError(FileNotFoundError):
    """The WILDS folder is missing; the message says where it was expected and how to get it."""


def load_dataset(name: str, root_dir: str | os.PathLike = "data", download: bool = False):
    """Load `fmow` or `iwildcam` through the real WILDS loader (`download=False` by default).

    The folder is checked at the door (`data_checks`): a missing file or column, or FMoW rows that
    no longer match its row-addressed images, raise `DatasetFormatError` (a ValueError) naming the
    file and what to do, instead of a pandas KeyError or silently relabelled images."""
    from . import wilds_compat

    spec = dataset_spec(name)
    root = Path(root_dir).expanduser()
    marker = root / spec.folder / f"RELEASE_v{spec.version}.txt"
    if not download and not marker.exists():
        raise DatasetNotFoundError(
            f"WILDS dataset '{name}' not found: expected {root / spec.folder} with {marker.name} inside "
            f"(root_dir={str(root_dir)!r}, resolved from {Path.cwd()}). Point root_dir at the folder that holds "
            f"'{spec.folder}', write a small synthetic copy with `clipdg synth --root {root}`, or pass "
            f"download=True to fetch the real data ({spec.download_gb:.1f} GB).")
    folder = root / spec.folder
    if marker.exists():  # a folder WILDS will not download into: checked at the door (data_checks.py)
        data_checks.check_files(name, folder)
    try:
        dataset = getattr(wilds_compat, spec.loader)(version=spec.version, root_dir=str(root), download=download)
    except (KeyError, ValueError, AssertionError, TypeError, IndexError) as e:  # WILDS's own, on bad values
        raise data_checks.loader_failure(name, folder, e) from e
    data_checks.check_loaded(name, dataset, folder, spec.n_classes)
    return dataset


def split_indices(dataset, split: str) -> np.ndarray:
    """Indices (into the full WILDS dataset) of one split, ascending."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {list(SPLITS)}")
    return np.flatnonzero(np.asarray(dataset.split_array) == dataset.split_dict[split])


def fraction_indices(dataset, fraction: float, seed: int, stratify: bool = False, split: str = "train") -> np.ndarray:
    """A seeded subset of `split` holding `fraction` of it (indices into the full dataset, ascending).

    Subsets of one seed are nested: each is a prefix of one fixed permutation (per class when
    `stratify`), so the 5 % subset lies inside the 10 % one. With `stratify`, every class present
    in the split keeps at least one example, which can add a few examples beyond `fraction`.
    PCG64 seeded from integers gives the same stream on every platform; the dataset name is part
    of the key so the two datasets' draws are independent.
    """
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


def split_summary(dataset):
    """One row per split: size, classes present, and the groups (regions / locations, years) it holds."""
    import pandas as pd

    spec = dataset_spec(dataset.dataset_name)
    y = np.asarray(dataset.y_array)
    rows = []
    for split in SPLITS:
        idx = split_indices(dataset, split)
        row = {"split": split, "title": SPLIT_TITLES[split], "n": len(idx), "classes": int(len(np.unique(y[idx])))}
        for field in spec.eval_groups:
            names = group_labels(dataset, field, np.unique(metadata_column(dataset, field)[idx]))
            row[field] = ", ".join(names) if len(names) <= 6 else f"{len(names)} {field}s"
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(name: str, dataset) -> str:
    table = split_summary(dataset)
    return f"{name} ({dataset.data_dir}): {len(dataset)} images, {dataset.n_classes} classes\n" + table.to_string(index=False)


# ---------------------------------------------------------------------------------------------
# Samplers: the order of epoch e depends only on (seed, e), so a resumed run replays it with no
# sampler state to save. DataLoader takes any sized iterable as a sampler; call set_epoch(e) first.
# ---------------------------------------------------------------------------------------------

class GroupUniformSampler:
    """`num_samples` positions per epoch with replacement, uniform over groups (each group equally
    likely, then uniform within it), as the reference study's WILDS group sampler."""

    def __init__(self, groups: Sequence[int], seed: int, num_samples: int | None = None):
        groups = np.asarray(groups)
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        self.weights = 1.0 / (len(counts) * counts[inverse])
        self.num_samples, self.seed, self.epoch = int(num_samples or len(groups)), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        weights = torch.as_tensor(self.weights, dtype=torch.double)
        return iter(torch.multinomial(weights, self.num_samples, replacement=True, generator=gen).tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler:
    """Plain shuffling whose order depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


SAMPLERS = {"group_uniform": lambda groups, seed: GroupUniformSampler(groups, seed),
            "shuffle": lambda groups, seed: EpochShuffleSampler(len(groups), seed)}


# ---------------------------------------------------------------------------------------------
# Class names and prompt templates: data shipped with the package
# ---------------------------------------------------------------------------------------------

def class_names(name: str) -> list[str]:
    """Readable class names in WILDS label order: FMoW's 62 with spaces, iWildCam's 182 in English."""
    dataset_spec(name)
    if name == "fmow":
        from wilds.datasets.fmow_dataset import categories
        return [c.replace("_", " ") for c in categories]
    with (DATA_FILES / "iwildcam_labels.csv").open() as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["y"]))
    return [r["english"] for r in rows]


def prompt_templates(name: str, kind: str = "paper") -> list[str]:
    """Templates with `{c}` for the class name (and `{article}`, 'a' or 'an')."""
    dataset_spec(name)
    if kind not in TEMPLATE_SETS:
        raise ValueError(f"templates={kind!r} is unknown; choose one of {list(TEMPLATE_SETS)}")
    with (DATA_FILES / "templates.json").open() as fh:
        return list(json.load(fh)[name][kind])


def render_prompt(template: str, classname: str) -> str:
    """One prompt: `{c}` (or open_clip's positional `{}`) is the class name, `{article}` 'a' / 'an'."""
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    return template.format(classname, c=classname, article=article)


def prompt_functions(templates: Sequence[str]) -> list:
    """open_clip-style callables (what `build_zero_shot_classifier` takes) for string templates."""
    return [lambda c, t=t: render_prompt(t, c) for t in templates]
