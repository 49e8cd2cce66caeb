"""iWildCam2020-WILDS (`iwildcam_v2.0`): camera-trap photos of 182 species; shift to unseen traps.

Splits come from metadata.csv's `split` column (OOD val and test are camera locations training
never saw); reported per location; `F1-macro_all` on every split. Each image is named in
metadata.csv's `filename` column, under train/.
"""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

from .spec import DatasetSpec, metadata_csv_paths

# The release's categories.csv (y, category_id, name: scientific names) plus an `english` column,
# the names the prompts use. WILDS ships no English names; this table is the translation.
ENGLISH_NAMES = Path(__file__).resolve().parent.parent / "data_files" / "iwildcam_labels.csv"


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: int(r["y"]))


def class_names(folder: Path | None = None) -> list[str]:
    """Readable names in label order. The label order (y -> category_id) is read from the folder's
    own categories.csv when there is one (the real release and the synthetic copy both have it), else
    from the bundled copy of it; each category is then named in English from the bundled table, or
    by its scientific name from categories.csv where the table has no English name."""
    english = {r["category_id"]: r["english"] for r in _read(ENGLISH_NAMES)}
    own = None if folder is None else Path(folder) / "categories.csv"
    rows = _read(own) if own is not None and own.is_file() else _read(ENGLISH_NAMES)
    return [english.get(r["category_id"]) or r["name"] for r in rows]


image_paths = metadata_csv_paths(lambda row: f"train/{row.filename}", usecols=["filename"])  # IWildCamDataset.get_input


def label_gaps(folder: Path, error: Exception) -> str:
    """Which of iWildCam's id columns skip values (read only once the loader has failed an assert)."""
    if not isinstance(error, AssertionError):
        return ""
    import pandas as pd
    try:
        frame = pd.read_csv(folder / "metadata.csv", usecols=["y", "location_remapped", "sequence_remapped"])
    except (OSError, ValueError):
        return ""
    found = []
    for column in frame.columns:
        values = np.unique(frame[column].to_numpy())
        absent = np.setdiff1d(np.arange(int(values.max()) + 1), values) if len(values) else []
        if len(absent):
            found.append(f"{column} never takes the value(s) {absent[:5].tolist()}{' ...' if len(absent) > 5 else ''}")
    return f"; {'; '.join(found)}" if found else ""


# ---------------------------------------------------------------------------------------------
# The synthetic copy (demo.synthetic stages it and writes the markers)
# ---------------------------------------------------------------------------------------------

def _labels(n: int, n_classes: int, rng: np.random.Generator, cover_all: bool) -> np.ndarray:
    """Long-tailed labels (Zipf-like, 'empty' most common, as in the real traps)."""
    p = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    labels = rng.choice(n_classes, size=n, p=p / p.sum())
    if cover_all:  # WILDS requires every label 0..181 somewhere; put each at least once in train
        labels[rng.permutation(n)[:n_classes]] = np.arange(n_classes)
    return labels


def write_synthetic(folder: Path, cfg) -> None:
    """metadata.csv, categories.csv and train/<uuid>.jpg, as in iwildcam_v2.0."""
    import pandas as pd

    from ..demo.render import Grain, Scene, class_prototypes, image_rng, output_size, random_scene, render, save_image

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
        labels = _labels(n, n_classes, rng, cover_all=(split == "train"))
        locs = rng.choice(loc_ids[kind], size=n)
        # every location occurs (WILDS requires location ids 0..L-1 to be contiguous)
        locs[: len(loc_ids[kind])] = loc_ids[kind][: n]
        for label, loc in zip(labels, locs):
            records.append({"split": split, "y": int(label), "location_remapped": int(loc)})
    records = [records[i] for i in rng.permutation(len(records))]
    rows = []
    size = output_size(cfg, SPEC)
    grain = Grain(cfg.seed, "iwildcam", SPEC.real_size) if cfg.profile == "real" else None
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


SPEC = DatasetSpec(
    name="iwildcam", version="2.0", loader="IWildCamDataset",
    splits=("train", "id_val", "id_test", "val", "test"),
    required_columns={
        "metadata.csv": ("split", "filename", "y", "location_remapped", "sequence_remapped", "datetime"),
    },
    metadata_file="metadata.csv",
    image_paths=image_paths, class_names=class_names,
    sampler_field="location", eval_groups=("location",),
    id_metric="F1-macro_all", ood_metric="F1-macro_all",
    n_classes=182, download_gb=12.0,
    writer=write_synthetic, real_size=(1920, 1080),
    value_hint="e.g. a split name other than train / val / test / id_val / id_test, a datetime not "
               "written as 2013-01-01 00:00:00.000, or labels y, location_remapped or sequence_remapped "
               "that do not run 0, 1, ... without gaps (the loader asserts that)",
    diagnose=label_gaps,
    in_demo=True,
)
