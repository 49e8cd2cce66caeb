"""Camelyon17-WILDS (`camelyon17_v1.0`): 96x96 px patches of lymph-node histopathology slides,
label 1 when the central 32x32 px region holds tumour tissue; shift between hospitals.

Under WILDS's 'official' split scheme the patches of hospitals (centres) 0, 3 and 4 are train and ID
val (metadata.csv's `split` column: 0 or 1), hospital 1 is OOD val and hospital 2 OOD test
(the loader sets their split from the `center` column, whatever the CSV says). There is no ID test
split. WILDS evaluates `acc_avg` (and per slide, `acc_wg`); `acc_avg` is the headline for ID and OOD.
Patches live at patches/patient_{p}_node_{n}/patch_patient_{p}_node_{n}_x_{x}_y_{y}.png, where
metadata.csv's `patient` is a zero-padded string (read with dtype str).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .spec import DatasetSpec, metadata_csv_paths

TRAIN_CENTRES = (0, 3, 4)
VAL_CENTRE, TEST_CENTRE = 1, 2  # wilds.datasets.camelyon17_dataset.VAL_CENTER / TEST_CENTER
PATCH = 96  # px: the release's patch size and the step of its patch coordinates
CLASS_NAMES = ("normal", "tumor")  # WILDS ships no class names; y = 1 is tumour tissue in the centre
N_CENTRES = 5


def class_names(folder: Path | None = None) -> list[str]:
    """The two labels in words (WILDS has no class file for Camelyon17: this bundled pair it is)."""
    return list(CLASS_NAMES)


# Camelyon17Dataset.get_input: its file name made from the patient, node and patch coordinates
image_paths = metadata_csv_paths(
    lambda r: f"patches/patient_{r.patient}_node_{r.node}/patch_patient_{r.patient}_node_{r.node}_x_{r.x_coord}_y_{r.y_coord}.png",
    index_col=0, dtype={"patient": "str"})


# ---------------------------------------------------------------------------------------------
# The synthetic copy (demo.synthetic stages it and writes the markers)
# ---------------------------------------------------------------------------------------------

def _slides(slides_per_centre: int) -> list[dict]:
    """Slides 0..5k-1, k per centre in centre order (as the release numbers them), each one
    (patient, node) of that centre (the release has 20 patients per centre: 000-019 in centre 0...)."""
    return [{"slide": c * slides_per_centre + j, "center": c, "patient": f"{20 * c + j:03d}", "node": j % 5}
            for c in range(N_CENTRES) for j in range(slides_per_centre)]


def write_synthetic(folder: Path, cfg) -> None:
    """metadata.csv (unnamed index column first) and the patches/ tree, as in camelyon17_v1.0."""
    import pandas as pd

    from ..demo.render import Grain, class_prototypes, image_rng, output_size, random_scene, render, save_image

    sizes, k = cfg.camelyon17_sizes, int(cfg.camelyon17_slides_per_centre)
    slides = _slides(k)
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
    size = output_size(cfg, SPEC)
    grain = Grain(cfg.seed, "camelyon17", SPEC.real_size) if cfg.profile == "real" else None
    for i, rec in enumerate(records):
        p, n = rec["patient"], rec["node"]
        path = folder / "patches" / f"patient_{p}_node_{n}" / f"patch_patient_{p}_node_{n}_x_{rec['x_coord']}_y_{rec['y_coord']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(render(protos, rec["tumor"], stains[rec["center"]], image_rng(cfg.seed, "camelyon17", i),
                          cfg.image_size, cfg.signal), path, cfg, "camelyon17", i, grain, size)
    columns = ["patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]
    pd.DataFrame(records)[columns].to_csv(folder / "metadata.csv")  # index written, unnamed, as the release's


SPEC = DatasetSpec(
    name="camelyon17", version="1.0", loader="CompatCamelyon17",
    splits=("train", "id_val", "val", "test"),
    required_columns={
        "metadata.csv": ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"),
    },
    metadata_file="metadata.csv",
    image_paths=image_paths, class_names=class_names,
    sampler_field="hospital", eval_groups=("hospital", "slide"),
    id_metric="acc_avg", ood_metric="acc_avg",
    n_classes=2, download_gb=10.7,
    writer=write_synthetic, real_size=(PATCH, PATCH),
    value_hint="e.g. a tumor label other than 0 / 1, a center or slide that is not an integer, or a split other "
               "than 0 (train) / 1 (ID val)",
    split_rule="its 'split' column (0 train, 1 ID val) and the 'center' column (centre 1 is OOD val, 2 OOD test)",
)
