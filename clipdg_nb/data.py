"""The WILDS data layer: loading, splits, seeded fraction subsets, samplers, class names, prompts.

Both benchmarks go through the real `wilds` loaders (with the compat shims of `wilds_compat`), so a
synthetic folder and the real 54 GB / 12 GB downloads take exactly the same code path.
"""
from __future__ import annotations

import csv
import json
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .vocab import EVAL_GROUPS, SPLITS, TEST_SPLITS, VALIDATION_SPLITS  # noqa: F401 (re-exported)
from .wilds_compat import CompatFMoW, CompatIWildCam

SPLIT_TITLES = {"train": "train", "id_val": "ID val", "id_test": "ID test", "val": "OOD val", "test": "OOD test"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: type
    version: str
    group_field: str  # what the uniform-over-groups sampler uses

    @property
    def eval_groups(self) -> tuple:
        """Metadata fields reported per group."""
        return EVAL_GROUPS[self.name]

    @property
    def folder(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def download_bytes(self) -> int:
        return self.loader._versions_dict[self.version]["compressed_size"]


DATASETS = {
    "fmow": DatasetSpec("fmow", CompatFMoW, "1.1", "region"),
    "iwildcam": DatasetSpec("iwildcam", CompatIWildCam, "2.0", "location"),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not supported; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


class DatasetNotFoundError(FileNotFoundError):
    """The WILDS folder is missing; the message says where it was expected and how to get it."""


def load_dataset(name: str, root_dir: str | os.PathLike = "data", download: bool = False):
    """Load `fmow` or `iwildcam` through the real WILDS loader (`download=False` by default)."""
    spec = dataset_spec(name)
    root = Path(root_dir).expanduser()
    folder = root / spec.folder
    marker = folder / f"RELEASE_v{spec.version}.txt"
    if not download and not marker.exists():
        gb = spec.download_bytes / 1e9
        raise DatasetNotFoundError(
            f"WILDS dataset '{name}' not found: expected {folder} with {marker.name} inside. "
            f"The real download is {gb:.1f} GB: pass download=True (root_dir={str(root)!r}) to fetch it, "
            f"point root_dir at the folder that holds '{spec.folder}', or write a small synthetic copy "
            f"with `clipdg synth --root {root}`.")
    return spec.loader(version=spec.version, root_dir=str(root), download=download)


def split_indices(dataset, split: str) -> np.ndarray:
    """Indices (into the full WILDS dataset) of one split, ascending."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {list(SPLITS)}")
    return np.flatnonzero(np.asarray(dataset.split_array) == dataset.split_dict[split])


# ---------------------------------------------------------------------------------------------
# Seeded fraction subsets
# ---------------------------------------------------------------------------------------------

def validate_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not math.isfinite(fraction):
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1], e.g. 0.05 for 5 % of train")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]; use 1.0 for the full train split "
                         "(zero-shot, 0 %, is a method, not a fraction)")
    return float(fraction)


def validate_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    return int(seed)


def _subset_rng(dataset_name: str, seed: int, stratum: int = -1) -> np.random.Generator:
    # PCG64 seeded from integers gives the same stream on every platform and numpy >= 1.17.
    # The dataset name is part of the key so fmow and iwildcam draws are independent.
    return np.random.default_rng([seed, zlib.crc32(dataset_name.encode()), stratum + 1])


def fraction_indices(dataset, fraction: float, seed: int, stratify: bool = False,
                     split: str = "train") -> np.ndarray:
    """A seeded subset of `split` holding `fraction` of it (indices into the full dataset, ascending).

    Subsets of one seed are nested: each is a prefix of one fixed permutation (per class when
    `stratify`), so the 5 % subset lies inside the 10 % one. With `stratify`, every class present
    in the split keeps at least one example, which can add a few examples beyond `fraction`.
    """
    fraction, seed = validate_fraction(fraction), validate_seed(seed)
    pool = split_indices(dataset, split)
    name = dataset.dataset_name
    if not stratify:
        order = pool[_subset_rng(name, seed).permutation(len(pool))]
        return np.sort(order[: max(1, round(fraction * len(pool)))])
    labels = np.asarray(dataset.y_array)[pool]
    chosen = []
    for label in np.unique(labels):
        members = pool[labels == label]
        order = members[_subset_rng(name, seed, int(label)).permutation(len(members))]
        chosen.append(order[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


# ---------------------------------------------------------------------------------------------
# Groups and samplers
# ---------------------------------------------------------------------------------------------

def metadata_column(dataset, field: str) -> np.ndarray:
    if field not in dataset.metadata_fields:
        raise ValueError(f"metadata field {field!r} not in {dataset.metadata_fields}")
    return np.asarray(dataset.metadata_array[:, dataset.metadata_fields.index(field)])


def group_labels(dataset, field: str, values) -> list[str]:
    """Readable names of metadata values: regions and years for FMoW, location ids for iWildCam."""
    mapping = (dataset.metadata_map or {}).get(field)
    return [str(mapping[int(v)]) if mapping is not None and 0 <= int(v) < len(mapping) else str(int(v))
            for v in values]


class GroupUniformSampler(Sampler[int]):
    """Draws `num_samples` positions per epoch with replacement, uniform over groups, as the reference
    study's WILDS group sampler did (each group equally likely, then uniform within the group).

    The draw of epoch e depends only on (seed, e): a resumed run replays the same order with no
    sampler state to save. Call `set_epoch(e)` before each epoch.
    """

    def __init__(self, groups: Sequence[int], seed: int, num_samples: int | None = None):
        groups = np.asarray(groups)
        if len(groups) == 0:
            raise ValueError("GroupUniformSampler needs at least one example")
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        weights = 1.0 / (len(counts) * counts[inverse])
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = int(num_samples or len(groups))
        self.seed, self.epoch = validate_seed(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen).tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler(Sampler[int]):
    """Plain shuffling whose order depends only on (seed, epoch), so resumed runs replay it."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), validate_seed(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def make_sampler(kind: str, groups: Sequence[int], seed: int) -> Sampler[int]:
    if kind == "group_uniform":
        return GroupUniformSampler(groups, seed)
    if kind == "shuffle":
        return EpochShuffleSampler(len(groups), seed)
    raise ValueError(f"sampler={kind!r} is unknown; choose 'group_uniform' or 'shuffle'")


# ---------------------------------------------------------------------------------------------
# Class names and prompt templates (data, shipped with the package)
# ---------------------------------------------------------------------------------------------

DATA_FILES = Path(__file__).with_name("data_files")


def _data_file(name: str) -> Path:
    return DATA_FILES / name


def class_names(name: str) -> list[str]:
    """Readable class names in WILDS label order: FMoW's 62 with spaces, iWildCam's 182 in English."""
    dataset_spec(name)
    if name == "fmow":
        from wilds.datasets.fmow_dataset import categories
        return [c.replace("_", " ") for c in categories]
    with _data_file("iwildcam_labels.csv").open() as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["y"]))
    return [r["english"] for r in rows]


TEMPLATE_SETS = ("paper", "ensemble")


def prompt_templates(name: str, kind: str = "paper") -> list[str]:
    """Templates with `{c}` for the class name (and `{article}`, 'a' or 'an').

    `paper`: the reference study's single template; `ensemble`: CLIP's published ensemble.
    """
    dataset_spec(name)
    if kind not in TEMPLATE_SETS:
        raise ValueError(f"templates={kind!r} is unknown; choose one of {list(TEMPLATE_SETS)}")
    with _data_file("templates.json").open() as fh:
        return list(json.load(fh)[name][kind])


def render_prompt(template: str, classname: str) -> str:
    """One prompt: `{c}` (or open_clip's positional `{}`) is the class name, `{article}` 'a' / 'an'."""
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    return template.format(classname, c=classname, article=article)


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Prompts per class: `[[template(c) for template] for c]`."""
    return [[render_prompt(t, c) for t in templates] for c in classnames]
