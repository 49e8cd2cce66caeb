"""Camelyon17-WILDS (`camelyon17_v1.0`): 96x96 px patches of lymph-node histopathology slides,
label 1 when the central 32x32 px region holds tumour tissue; shift between hospitals.

Under WILDS's 'official' split scheme the patches of hospitals (centres) 0, 3 and 4 are train and ID
val (metadata.csv's `split` column: 0 or 1), hospital 1 is OOD val and hospital 2 OOD test
(the loader sets their split from the `center` column, whatever the CSV says). There is no ID test
split. WILDS evaluates `acc_avg` (and per slide, `acc_wg`); `acc_avg` is the headline for ID and OOD.
Patches live at patches/patient_{p}_node_{n}/patch_patient_{p}_node_{n}_x_{x}_y_{y}.png, where
metadata.csv's `patient` is a zero-padded string (read with dtype str)."""
from __future__ import annotations

from .spec import DatasetSpec, metadata_csv_paths

PATCH = 96  # px: the release's patch size and the step of its patch coordinates
CLASS_NAMES = ("normal", "tumor")  # WILDS ships no class names; y = 1 is tumour tissue in the centre

# Camelyon17Dataset.get_input: its file name made from the patient, node and patch coordinates
image_paths = metadata_csv_paths(
    lambda r: f"patches/patient_{r.patient}_node_{r.node}/patch_patient_{r.patient}_node_{r.node}_x_{r.x_coord}_y_{r.y_coord}.png",
    index_col=0, dtype={"patient": "str"})


SPEC = DatasetSpec(
    name="camelyon17", version="1.0", loader="CompatCamelyon17",
    splits=("train", "id_val", "val", "test"),
    required_columns={
        "metadata.csv": ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"),
    },
    metadata_file="metadata.csv",
    image_paths=image_paths, class_names=lambda folder=None: list(CLASS_NAMES),  # no class file to read
    sampler_field="hospital", eval_groups=("hospital", "slide"),
    id_metric="acc_avg", ood_metric="acc_avg",
    n_classes=2, download_gb=10.7,
    real_size=(PATCH, PATCH),
    value_hint="e.g. a tumor label other than 0 / 1, a center or slide that is not an integer, or a split other "
               "than 0 (train) / 1 (ID val)",
    split_rule="its 'split' column (0 train, 1 ID val) and the 'center' column (centre 1 is OOD val, 2 OOD test)",
)
