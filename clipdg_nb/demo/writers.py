"""The synthetic copies' files, one writer per dataset, each in its release's exact on-disk format
(`synthetic.write_synthetic` stages a copy, calls its writer and writes the markers). A dataset
without an entry in WRITERS can be studied, just not written synthetically.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.camelyon17 import CLASS_NAMES, PATCH
from ..data.camelyon17 import SPEC as CAMELYON17
from ..data.fmow import SPEC as FMOW
from ..data.fmow import class_names as fmow_class_names
from ..data.iwildcam import ENGLISH_NAMES
from ..data.iwildcam import SPEC as IWILDCAM
from .render import Grain, Scene, class_prototypes, image_rng, output_size, random_scene, render, save_image

# Camelyon17's hospitals (the docstring of data/camelyon17.py says which split each feeds)
N_CENTRES, TRAIN_CENTRES = 5, (0, 3, 4)
VAL_CENTRE, TEST_CENTRE = 1, 2  # wilds.datasets.camelyon17_dataset.VAL_CENTER / TEST_CENTER
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


def _fmow_rows(cfg, rng: np.random.Generator):
    """Metadata rows: WILDS splits come from the CSV's 'split' column crossed with the year."""

    regions = list(FMOW_COUNTRIES)
    p = np.array([FMOW_REGION_WEIGHTS[r] for r in regions])
    plan = [("train", "train", FMOW_TRAIN_YEARS), ("id_val", "val", FMOW_TRAIN_YEARS),
            ("id_test", "test", FMOW_TRAIN_YEARS), ("val", "val", FMOW_OOD_VAL_YEARS),
            ("test", "test", FMOW_OOD_TEST_YEARS)]
    n_classes = len(fmow_class_names())
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


def _fmow_timestamp(rng: np.random.Generator, year: int, with_ms: bool) -> str:
    moment = dt.datetime(year, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 364 * 86400)))
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{int(rng.integers(0, 1000)):03d}Z" if with_ms else f"{stamp}Z"


def write_fmow(folder: Path, cfg) -> None:
    """rgb_metadata.csv, country_code_mapping.csv and images/rgb_img_{i}.png, as in fmow_v1.1."""
    from wilds.datasets.fmow_dataset import categories  # imports torch: only when FMoW is written

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 1])
    rows = _fmow_rows(cfg, rng)
    protos = class_prototypes(len(categories), cfg.seed, "fmow")
    region_scenes = {r: random_scene(np.random.default_rng([cfg.seed, 2, i]), 0.15 * cfg.shift)
                     for i, r in enumerate(FMOW_COUNTRIES)}
    # Sensor drift: a colour cast that grows linearly with the year, so 2013-2017 extrapolate.
    drift = np.random.default_rng([cfg.seed, 3]).normal(0, 1, 3)
    drift = 0.06 * cfg.shift * drift / np.linalg.norm(drift)
    timestamps, lats, lons = [], [], []
    size = output_size(cfg, FMOW)
    grain = Grain(cfg.seed, "fmow", FMOW.real_size) if cfg.profile == "real" else None
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
        timestamps.append(_fmow_timestamp(img_rng, row.year, with_ms))
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


def _iwildcam_labels(n: int, n_classes: int, rng: np.random.Generator, cover_all: bool) -> np.ndarray:
    """Long-tailed labels (Zipf-like, 'empty' most common, as in the real traps)."""
    p = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    labels = rng.choice(n_classes, size=n, p=p / p.sum())
    if cover_all:  # WILDS requires every label 0..181 somewhere; put each at least once in train
        labels[rng.permutation(n)[:n_classes]] = np.arange(n_classes)
    return labels


def write_iwildcam(folder: Path, cfg) -> None:
    """metadata.csv, categories.csv and train/<uuid>.jpg, as in iwildcam_v2.0."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    labels_table = pd.read_csv(ENGLISH_NAMES)
    n_classes = len(labels_table)
    rng = np.random.default_rng([cfg.seed, 21])
    protos = class_prototypes(n_classes, cfg.seed, "iwildcam")
    n_loc = cfg.iwildcam_locations
    # ID traps vary a little; unseen OOD traps vary more, so they are scenes training never saw.
    loc_spread = {"id": 0.12, "val": 0.35, "test": 0.35}
    locations, kinds = [], []
    for kind in ("id", "val", "test"):
        for j in range(n_loc[kind]):
            locations.append(random_scene(np.random.default_rng([cfg.seed, 22, len(locations)]),
                                          loc_spread[kind] * cfg.shift, gray_prob=0.0))
            kinds.append(kind)
    loc_ids = {k: [i for i, kk in enumerate(kinds) if kk == k] for k in ("id", "val", "test")}
    plan = [("train", "id"), ("id_val", "id"), ("id_test", "id"), ("val", "val"), ("test", "test")]
    records = []
    for split, kind in plan:
        n = int(cfg.iwildcam_sizes[split])
        labels = _iwildcam_labels(n, n_classes, rng, cover_all=(split == "train"))
        locs = rng.choice(loc_ids[kind], size=n)
        # every location occurs (WILDS requires location ids 0..L-1 to be contiguous)
        locs[: len(loc_ids[kind])] = loc_ids[kind][: n]
        for label, loc in zip(labels, locs):
            records.append({"split": split, "y": int(label), "location_remapped": int(loc)})
    records = [records[i] for i in rng.permutation(len(records))]
    rows = []
    size = output_size(cfg, IWILDCAM)
    grain = Grain(cfg.seed, "iwildcam", IWILDCAM.real_size) if cfg.profile == "real" else None
    for i, rec in enumerate(records):
        img_rng = image_rng(cfg.seed, "iwildcam", i)
        hour = int(img_rng.integers(0, 24))
        night = hour < 6 or hour >= 19
        scene = locations[rec["location_remapped"]]
        if night:  # camera traps shoot infrared at night: grey images
            scene = Scene(scene.bg_color, scene.bg_angle, scene.bg_freq, scene.gain, scene.contrast * 0.8,
                          scene.noise + 0.02, gray=True)
        uid = "%08x-%04x-11ea-%04x-%012x" % tuple(int(v) for v in (img_rng.integers(0, 2**32), img_rng.integers(0, 2**16),
                                                                   img_rng.integers(0, 2**16), img_rng.integers(0, 2**48)))
        filename = f"{uid}.jpg"
        save_image(render(protos, rec["y"], scene, img_rng, cfg.image_size, cfg.signal),
                   folder / "train" / filename, cfg, "iwildcam", i, grain, size)
        moment = dt.datetime(2013, 1, 1) + dt.timedelta(days=int(img_rng.integers(0, 5 * 365)), hours=hour,
                                                        minutes=int(img_rng.integers(0, 60)), seconds=int(img_rng.integers(0, 60)))
        rows.append({
            "split": rec["split"], "location_remapped": rec["location_remapped"],
            "location": 1000 + 7 * rec["location_remapped"],
            "sequence_remapped": i, "sequence": uid[:8],  # one image per sequence
            "y": rec["y"], "category_id": int(labels_table.loc[rec["y"], "category_id"]),
            "datetime": moment.strftime("%Y-%m-%d %H:%M:%S.000"),
            "filename": filename, "image_id": uid,
            "width": size[0], "height": size[1],
        })
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    labels_table[["y", "category_id", "name"]].to_csv(folder / "categories.csv", index=False)


def _camelyon17_slides(slides_per_centre: int) -> list[dict]:
    """Slides 0..5k-1, k per centre in centre order (as the release numbers them), each one
    (patient, node) of that centre (the release has 20 patients per centre: 000-019 in centre 0...)."""
    return [{"slide": c * slides_per_centre + j, "center": c, "patient": f"{20 * c + j:03d}", "node": j % 5}
            for c in range(N_CENTRES) for j in range(slides_per_centre)]


def write_camelyon17(folder: Path, cfg) -> None:
    """metadata.csv (unnamed index column first) and the patches/ tree, as in camelyon17_v1.0."""
    sizes, k = cfg.camelyon17_sizes, int(cfg.camelyon17_slides_per_centre)
    slides = _camelyon17_slides(k)
    rng = np.random.default_rng([cfg.seed, 41])
    protos = class_prototypes(len(CLASS_NAMES), cfg.seed, "camelyon17")
    # Each hospital stains and scans differently: its own colour cast, wider for the unseen ones.
    spread = {c: (0.12 if c in TRAIN_CENTRES else 0.35) * cfg.shift for c in range(N_CENTRES)}
    stains = {c: random_scene(np.random.default_rng([cfg.seed, 42, c]), spread[c]) for c in range(N_CENTRES)}
    # (WILDS split, centres it draws from, the CSV's split value)
    plan = [("train", TRAIN_CENTRES, 0), ("id_val", TRAIN_CENTRES, 1), ("val", (VAL_CENTRE,), 0),
            ("test", (TEST_CENTRE,), 0)]
    records = []
    for split, centres, csv_split in plan:
        n = int(sizes[split])
        pool = [s for s in slides if s["center"] in centres]
        chosen = rng.choice(len(pool), size=n)
        chosen[: min(n, len(pool))] = np.arange(min(n, len(pool)))  # every slide of the split occurs
        labels = rng.permutation(np.arange(n) % 2)  # balanced, as the release is
        for s, label in zip(chosen, labels):
            records.append({**pool[s], "tumor": int(label), "split": csv_split})
    # distinct patch coordinates per slide (multiples of the patch size, as patches tile the slide)
    taken: dict[int, set] = {}
    for rec in records:
        while True:
            xy = (int(rng.integers(0, 400)) * PATCH, int(rng.integers(0, 400)) * PATCH)
            if xy not in taken.setdefault(rec["slide"], set()):
                taken[rec["slide"]].add(xy)
                rec["x_coord"], rec["y_coord"] = xy
                break
    records = [records[i] for i in rng.permutation(len(records))]
    size = output_size(cfg, CAMELYON17)
    grain = Grain(cfg.seed, "camelyon17", CAMELYON17.real_size) if cfg.profile == "real" else None
    for i, rec in enumerate(records):
        p, n = rec["patient"], rec["node"]
        path = folder / "patches" / f"patient_{p}_node_{n}" / f"patch_patient_{p}_node_{n}_x_{rec['x_coord']}_y_{rec['y_coord']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(render(protos, rec["tumor"], stains[rec["center"]], image_rng(cfg.seed, "camelyon17", i),
                          cfg.image_size, cfg.signal), path, cfg, "camelyon17", i, grain, size)
    columns = ["patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]
    pd.DataFrame(records)[columns].to_csv(folder / "metadata.csv")  # index written, unnamed, as the release's


WRITERS = {"fmow": write_fmow, "iwildcam": write_iwildcam, "camelyon17": write_camelyon17}
