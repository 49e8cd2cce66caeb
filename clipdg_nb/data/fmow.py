"""FMoW-WILDS (`fmow_v1.1`): satellite images of 62 land uses; shift over time and region.

Train < 2013, OOD val 2013-15, OOD test >= 2016 (the year comes from the timestamp), reported per
region and year; `acc_avg` on ID splits, `acc_worst_region` on OOD ones. Images are addressed by
row: row i of rgb_metadata.csv is images/rgb_img_{i}.png.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from .checks import DatasetFormatError, remedy
from .spec import DatasetSpec

# Region names exactly as WILDS's country_code_mapping.csv spells them, with a few real countries each.
FMOW_COUNTRIES = {
    "Asia": ["CHN", "IND", "JPN", "IDN", "THA"],
    "Europe": ["FRA", "DEU", "ITA", "ESP", "GBR"],
    "Africa": ["NGA", "KEN", "EGY", "ZAF"],
    "Americas": ["USA", "BRA", "MEX", "CAN", "ARG"],
    "Oceania": ["AUS", "NZL", "FJI"],
}
# Train share of each region: Africa and Oceania are rare, as in the real FMoW.
FMOW_REGION_WEIGHTS = {"Asia": 0.3, "Europe": 0.3, "Africa": 0.08, "Americas": 0.25, "Oceania": 0.07}
FMOW_TRAIN_YEARS = range(2002, 2013)
FMOW_OOD_VAL_YEARS = range(2013, 2016)
FMOW_OOD_TEST_YEARS = range(2016, 2018)


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


# ---------------------------------------------------------------------------------------------
# The synthetic copy (demo.synthetic stages it and writes the markers)
# ---------------------------------------------------------------------------------------------

def _rows(cfg, rng: np.random.Generator):
    """Metadata rows: WILDS splits come from the CSV's 'split' column crossed with the year."""
    import pandas as pd

    regions = list(FMOW_COUNTRIES)
    p = np.array([FMOW_REGION_WEIGHTS[r] for r in regions])
    plan = [("train", "train", FMOW_TRAIN_YEARS), ("id_val", "val", FMOW_TRAIN_YEARS),
            ("id_test", "test", FMOW_TRAIN_YEARS), ("val", "val", FMOW_OOD_VAL_YEARS),
            ("test", "test", FMOW_OOD_TEST_YEARS)]
    n_classes = len(class_names())
    rows = []
    for wilds_split, csv_split, years in plan:
        n = int(cfg.fmow_sizes[wilds_split])
        # every class occurs in train (labels cycle), other splits draw uniformly
        labels = np.arange(n) % n_classes if wilds_split == "train" else rng.integers(0, n_classes, n)
        # OOD splits see every region evenly, so the worst region is measured on enough images
        region_p = p if wilds_split in ("train", "id_val", "id_test") else np.full(len(regions), 1 / len(regions))
        for label in labels:
            region = regions[rng.choice(len(regions), p=region_p)]
            rows.append({"split": csv_split, "label": int(label), "region_name": region,
                         "country_code": rng.choice(FMOW_COUNTRIES[region]),
                         "year": int(rng.choice(list(years)))})
    # A few sequestered rows, as in the real release: WILDS drops them before any split.
    for _ in range(3):
        rows.append({"split": "seq", "label": int(rng.integers(0, n_classes)), "region_name": "Asia",
                     "country_code": "CHN", "year": 2012})
    order = rng.permutation(len(rows))  # the real CSV is not sorted by split
    return pd.DataFrame([rows[i] for i in order])


def _timestamp(rng: np.random.Generator, year: int, with_ms: bool) -> str:
    moment = dt.datetime(year, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 364 * 86400)))
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{int(rng.integers(0, 1000)):03d}Z" if with_ms else f"{stamp}Z"


def write_synthetic(folder: Path, cfg) -> None:
    """rgb_metadata.csv, country_code_mapping.csv and images/rgb_img_{i}.png, as in fmow_v1.1."""
    import pandas as pd
    from wilds.datasets.fmow_dataset import categories

    from ..demo.render import Grain, Scene, class_prototypes, image_rng, output_size, random_scene, render, save_image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 1])
    rows = _rows(cfg, rng)
    protos = class_prototypes(len(categories), cfg.seed, "fmow")
    region_scenes = {r: random_scene(np.random.default_rng([cfg.seed, 2, i]), 0.15 * cfg.shift)
                     for i, r in enumerate(FMOW_COUNTRIES)}
    # Sensor drift: a colour cast that grows linearly with the year, so 2013-2017 extrapolate.
    drift = np.random.default_rng([cfg.seed, 3]).normal(0, 1, 3)
    drift = 0.06 * cfg.shift * drift / np.linalg.norm(drift)
    timestamps, lats, lons = [], [], []
    size = output_size(cfg, SPEC)
    grain = Grain(cfg.seed, "fmow", SPEC.real_size) if cfg.profile == "real" else None
    for i, row in enumerate(rows.itertuples()):
        img_rng = image_rng(cfg.seed, "fmow", i)
        base = region_scenes[row.region_name]
        years_on = row.year - FMOW_TRAIN_YEARS.start
        scene = Scene(base.bg_color, base.bg_angle, base.bg_freq,
                      tuple(np.clip(np.asarray(base.gain) + drift * years_on, 0.2, 2.5)),
                      base.contrast * (1 - 0.02 * cfg.shift * max(0, years_on - 10)), base.noise)
        save_image(render(protos, row.label, scene, img_rng, cfg.image_size, cfg.signal),
                   folder / "images" / f"rgb_img_{i}.png", cfg, "fmow", i, grain, size)
        # the real CSV has ~0.5 % timestamps with milliseconds; keep at least one when asked
        with_ms = cfg.mixed_timestamps and (i == 1 or img_rng.random() < 0.01)
        timestamps.append(_timestamp(img_rng, row.year, with_ms))
        lats.append(round(float(img_rng.uniform(-45, 60)), 6))
        lons.append(round(float(img_rng.uniform(-170, 170)), 6))
    meta = pd.DataFrame({
        "split": rows["split"],
        "img_filename": [f"{categories[l]}_{i}_0_rgb.jpg" for i, l in enumerate(rows["label"])],
        "img_path": [f"{s}/{categories[l]}/{categories[l]}_{i}/{categories[l]}_{i}_0_rgb.jpg"
                     for i, (s, l) in enumerate(zip(rows["split"], rows["label"]))],
        "spatial_reference": "WGS84", "epsg": 4326,
        "category": [categories[l] for l in rows["label"]],
        "visible": True, "img_width": size[0], "img_height": size[1],
        "country_code": rows["country_code"], "cloud_cover": 0,
        "timestamp": timestamps, "lat": lats, "lon": lons,
    })
    meta.to_csv(folder / "rgb_metadata.csv", index=False)
    mapping = [{"name": code, "alpha-2": code[:2], "alpha-3": code, "region": region}
               for region, codes in FMOW_COUNTRIES.items() for code in codes]
    pd.DataFrame(mapping).to_csv(folder / "country_code_mapping.csv", index=False)


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
    writer=write_synthetic, real_size=(224, 224),
    value_hint="e.g. a category that is not one of FMoW's 62, or a timestamp that is not ISO 8601",
    split_rule="its 'split' column and the timestamps",
    in_demo=True,
)
