"""FMoW-WILDS (`fmow_v1.1`): satellite images of 62 land uses; shift over time and region.

Train < 2013, OOD val 2013-15, OOD test >= 2016 (the year comes from the timestamp), reported per
region and year; `acc_avg` on ID splits, `acc_worst_region` on OOD ones. Images are addressed by
row: row i of rgb_metadata.csv is images/rgb_img_{i}.png."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .checks import DatasetFormatError, remedy
from .spec import DatasetSpec


def class_names(folder: Path | None = None) -> list[str]:
    """WILDS's own `categories` list (the release has no class file), with spaces for underscores."""
    from wilds.datasets.fmow_dataset import categories
    return [c.replace("_", " ") for c in categories]


def image_paths(dataset, indices) -> list[str]:
    """FMoWDataset.get_input: root / 'images' / f'rgb_img_{full_idxs[idx]}.png'."""
    return [f"images/rgb_img_{int(k)}.png" for k in np.asarray(dataset.full_idxs)[np.asarray(indices)]]


def check_images(dataset, folder: Path) -> None:
    """Row i of rgb_metadata.csv is images/rgb_img_{i}.png, so a removed or added row would shift every
    later label onto another image: three stats check the counts match (first and last exist, none
    beyond); the folder (523,846 files in the real release) is listed only to word the error."""
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


SPEC = DatasetSpec(
    name="fmow", version="1.1", loader="CompatFMoW",
    splits=("train", "id_val", "id_test", "val", "test"),
    required_columns={
        "rgb_metadata.csv": ("split", "category", "country_code", "timestamp"),
        "country_code_mapping.csv": ("alpha-3", "region"),
    },
    metadata_file="rgb_metadata.csv",
    image_paths=image_paths, check_images=check_images, class_names=class_names,
    sampler_field="region", eval_groups=("region", "year"),
    id_metric="acc_avg", ood_metric="acc_worst_region",
    n_classes=62, download_gb=53.9,
    real_size=(224, 224),
    value_hint="e.g. a category that is not one of FMoW's 62, or a timestamp that is not ISO 8601",
    split_rule="its 'split' column and the timestamps",
    in_demo=True,
)
