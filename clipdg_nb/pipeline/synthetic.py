"""Small datasets in the exact on-disk formats of WILDS `fmow_v1.1` and `iwildcam_v2.0`.

The unmodified WILDS loaders read what this writes with `download=False`. Images carry a learnable
class signal (each class is a textured object with its own colours, orientation and frequency) on a
domain-dependent scene (background, colour cast, contrast, noise). Domains mirror the real shifts:
FMoW's region and acquisition year (a sensor drift that grows with the year, so the OOD years lie
beyond the training range) and iWildCam's camera location (each trap has its own scene; OOD
locations are drawn from a wider distribution). A model trained on ID data therefore scores lower
OOD, by an amount `shift` controls. Everything is deterministic for a seed.

Two profiles. `default` writes small images (`image_size` px, both datasets) that train in minutes.
`real` (`real_profile_config(n)`) writes the files at the sizes of the real releases, FMoW as
224x224 PNG and iWildCam as 1920x1080 JPEG, for measuring decode and cache costs: the scene is
rendered at `image_size`, upscaled (bicubic) and overlaid with fine and coarse grain so that the
files compress (and decode) like photographs, not like flat colour fields.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..datasets import DATA_FILES, DATASETS, class_names
from .render import (REAL_SIZES, _Grain, _image_rng, _output_size, _save_image, class_prototypes,  # noqa: F401
                     random_scene, render, Scene)

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


@dataclass
class SynthConfig:
    """Sizes and strengths of a synthetic copy. The defaults train in minutes on 2 CPU cores."""
    seed: int = 0
    image_size: int = 32
    shift: float = 1.0  # 0 = no domain shift; 1 = the default gap between ID and OOD
    signal: float = 1.0  # strength of the class object against the scene
    fmow_sizes: dict = field(default_factory=lambda: {
        "train": 1860, "id_val": 310, "id_test": 310, "val": 310, "test": 310})
    iwildcam_sizes: dict = field(default_factory=lambda: {
        "train": 2000, "id_val": 300, "id_test": 300, "val": 300, "test": 400})
    iwildcam_locations: dict = field(default_factory=lambda: {"id": 16, "val": 5, "test": 6})
    mixed_timestamps: bool = False  # write FMoW's real mix of ISO-8601 forms (plain pandas>=2 fails on it)
    profile: str = "default"  # "real": files at the real releases' sizes (see REAL_SIZES)

    def validate(self) -> "SynthConfig":
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size={self.image_size!r} must be an int in [8, 1024] (224 for ViT-B/32)")
        if self.profile not in PROFILES:
            raise ValueError(f"profile={self.profile!r} is unknown; choose one of {list(PROFILES)}")
        for name in ("shift", "signal"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative number")
        for attr in ("fmow_sizes", "iwildcam_sizes"):
            sizes = getattr(self, attr)
            missing = {"train", "id_val", "id_test", "val", "test"} - set(sizes)
            if missing or any(int(v) < 1 for v in sizes.values()):
                raise ValueError(f"{attr}={sizes!r} needs a positive size for each of train, id_val, id_test, val, test")
        if self.iwildcam_sizes["train"] < 182:
            raise ValueError("iwildcam_sizes['train'] must be >= 182 so that every iWildCam class occurs "
                             "(WILDS's loader requires labels 0..181 to be present)")
        return self


PROFILES = ("default", "real")
# (width, height) of the files in the real releases: FMoW's are 224 px PNGs, iWildCam's camera-trap
# JPEGs are mostly 1920x1080 (some 2048x1536).


def real_profile_config(n_images: int = 300, n_eval: int | None = None, seed: int = 0,
                        render_size: int = 64, **fields) -> SynthConfig:
    """A `profile='real'` config: `n_images` train images per dataset (iWildCam: at least 182, so
    every class occurs) and `n_eval` (default n_images // 10, at least 5) in each other split."""
    n_train = int(n_images)
    n_eval = max(5, n_train // 10) if n_eval is None else int(n_eval)
    splits = ("id_val", "id_test", "val", "test")
    return SynthConfig(
        seed=seed, image_size=render_size, profile="real",
        fmow_sizes={"train": n_train, **{s: n_eval for s in splits}},
        iwildcam_sizes={"train": max(182, n_train), **{s: n_eval for s in splits}},
        iwildcam_locations={"id": 6, "val": 3, "test": 3}, **fields).validate()


# ---------------------------------------------------------------------------------------------
# FMoW (fmow_v1.1)
# ---------------------------------------------------------------------------------------------

def _fmow_rows(cfg: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Metadata rows: WILDS splits come from the CSV's 'split' column crossed with the year."""
    regions = list(FMOW_COUNTRIES)
    p = np.array([FMOW_REGION_WEIGHTS[r] for r in regions])
    plan = [("train", "train", FMOW_TRAIN_YEARS), ("id_val", "val", FMOW_TRAIN_YEARS),
            ("id_test", "test", FMOW_TRAIN_YEARS), ("val", "val", FMOW_OOD_VAL_YEARS),
            ("test", "test", FMOW_OOD_TEST_YEARS)]
    n_classes = len(class_names("fmow"))
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


def write_fmow(folder: Path, cfg: SynthConfig) -> Path:
    from wilds.datasets.fmow_dataset import categories
    spec = DATASETS["fmow"]
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
    grain = _Grain(cfg.seed, "fmow", REAL_SIZES["fmow"]) if cfg.profile == "real" else None
    for i, row in enumerate(rows.itertuples()):
        img_rng = _image_rng(cfg.seed, "fmow", i)
        base = region_scenes[row.region_name]
        years_on = row.year - FMOW_TRAIN_YEARS.start
        scene = Scene(base.bg_color, base.bg_angle, base.bg_freq,
                      tuple(np.clip(np.asarray(base.gain) + drift * years_on, 0.2, 2.5)),
                      base.contrast * (1 - 0.02 * cfg.shift * max(0, years_on - 10)), base.noise)
        _save_image(render(protos, row.label, scene, img_rng, cfg.image_size, cfg.signal),
                    folder / "images" / f"rgb_img_{i}.png", cfg, "fmow", i, grain)
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
        "visible": True, "img_width": _output_size(cfg, "fmow")[0], "img_height": _output_size(cfg, "fmow")[1],
        "country_code": rows["country_code"], "cloud_cover": 0,
        "timestamp": timestamps, "lat": lats, "lon": lons,
    })
    meta.to_csv(folder / "rgb_metadata.csv", index=False)
    mapping = [{"name": code, "alpha-2": code[:2], "alpha-3": code, "region": region}
               for region, codes in FMOW_COUNTRIES.items() for code in codes]
    pd.DataFrame(mapping).to_csv(folder / "country_code_mapping.csv", index=False)
    return _finish(folder, spec, cfg)


# ---------------------------------------------------------------------------------------------
# iWildCam (iwildcam_v2.0)
# ---------------------------------------------------------------------------------------------

def _iwildcam_labels(n: int, n_classes: int, rng: np.random.Generator, cover_all: bool) -> np.ndarray:
    """Long-tailed labels (Zipf-like, 'empty' most common, as in the real traps)."""
    p = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    labels = rng.choice(n_classes, size=n, p=p / p.sum())
    if cover_all:  # WILDS requires every label 0..181 somewhere; put each at least once in train
        labels[rng.permutation(n)[:n_classes]] = np.arange(n_classes)
    return labels


def write_iwildcam(folder: Path, cfg: SynthConfig) -> Path:
    spec = DATASETS["iwildcam"]
    (folder / "train").mkdir(parents=True, exist_ok=True)
    labels_table = pd.read_csv(DATA_FILES / "iwildcam_labels.csv")
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
    grain = _Grain(cfg.seed, "iwildcam", REAL_SIZES["iwildcam"]) if cfg.profile == "real" else None
    for i, rec in enumerate(records):
        img_rng = _image_rng(cfg.seed, "iwildcam", i)
        hour = int(img_rng.integers(0, 24))
        night = hour < 6 or hour >= 19
        scene = locations[rec["location_remapped"]]
        if night:  # camera traps shoot infrared at night: grey images
            scene = Scene(scene.bg_color, scene.bg_angle, scene.bg_freq, scene.gain, scene.contrast * 0.8,
                          scene.noise + 0.02, gray=True)
        uid = "%08x-%04x-11ea-%04x-%012x" % tuple(int(v) for v in (img_rng.integers(0, 2**32), img_rng.integers(0, 2**16),
                                                                   img_rng.integers(0, 2**16), img_rng.integers(0, 2**48)))
        filename = f"{uid}.jpg"
        _save_image(render(protos, rec["y"], scene, img_rng, cfg.image_size, cfg.signal),
                    folder / "train" / filename, cfg, "iwildcam", i, grain)
        moment = dt.datetime(2013, 1, 1) + dt.timedelta(days=int(img_rng.integers(0, 5 * 365)), hours=hour,
                                                        minutes=int(img_rng.integers(0, 60)), seconds=int(img_rng.integers(0, 60)))
        rows.append({
            "split": rec["split"], "location_remapped": rec["location_remapped"],
            "location": 1000 + 7 * rec["location_remapped"],
            "sequence_remapped": i, "sequence": uid[:8],  # one image per sequence
            "y": rec["y"], "category_id": int(labels_table.loc[rec["y"], "category_id"]),
            "datetime": moment.strftime("%Y-%m-%d %H:%M:%S.000"),
            "filename": filename, "image_id": uid,
            "width": _output_size(cfg, "iwildcam")[0], "height": _output_size(cfg, "iwildcam")[1],
        })
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    labels_table[["y", "category_id", "name"]].to_csv(folder / "categories.csv", index=False)
    return _finish(folder, spec, cfg)


def _marker(cfg: SynthConfig) -> dict:
    # The default profile's marker is what it was before profiles existed, so copies stay current.
    fields = asdict(cfg)
    if fields.get("profile") == "default":
        fields.pop("profile")
    return fields


def _finish(folder: Path, spec, cfg: SynthConfig) -> Path:
    # The marker WILDS checks before deciding not to download; written last, so a half-written
    # folder is never taken for a complete one.
    (folder / "SYNTHETIC.json").write_text(json.dumps({"generator": "clipdg_nb.synthetic", **_marker(cfg)}, indent=1))
    (folder / f"RELEASE_v{spec.version}.txt").write_text(f"synthetic {spec.folder} written by clipdg_nb\n")
    return folder


WRITERS = {"fmow": write_fmow, "iwildcam": write_iwildcam}


def synthetic_is_current(root: Path, name: str, cfg: SynthConfig) -> bool:
    folder = Path(root) / DATASETS[name].folder
    marker = folder / "SYNTHETIC.json"
    release = folder / f"RELEASE_v{DATASETS[name].version}.txt"
    if not (marker.exists() and release.exists()):
        return False
    saved = json.loads(marker.read_text())
    saved.pop("generator", None)
    return saved == json.loads(json.dumps(_marker(cfg)))


def write_synthetic(root, datasets=("fmow", "iwildcam"), cfg: SynthConfig | None = None,
                    overwrite: bool = False) -> dict:
    """Write each dataset under `root` (skipped when an identical copy is there). Returns the folders."""
    cfg = (cfg or SynthConfig()).validate()
    out = {}
    for name in datasets:
        if name not in WRITERS:
            raise ValueError(f"dataset={name!r} has no synthetic writer; choose from {sorted(WRITERS)}")
        folder = Path(root) / DATASETS[name].folder
        if synthetic_is_current(root, name, cfg) and not overwrite:
            out[name] = folder
            continue
        if folder.exists() and not (folder / "SYNTHETIC.json").exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not a synthetic copy: refusing to overwrite "
                                  "what may be the real dataset; choose another --root")
        # Write beside the target and swap in at the end: an interrupted write leaves no half folder.
        staging = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        WRITERS[name](staging, cfg)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        out[name] = folder
    return out
