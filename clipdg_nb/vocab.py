"""The study's shared names, as plain data: splits, headline metrics, group fields, methods.

Kept free of torch and wilds imports so that light modules (analysis, the notebook helpers) and
heavy ones (data, config, api) read the same facts from one place.
"""
from __future__ import annotations

# One split vocabulary for both datasets (WILDS's own names): ID = same domains as train.
SPLITS = ("train", "id_val", "id_test", "val", "test")
VALIDATION_SPLITS = ("id_val", "val")
TEST_SPLITS = ("id_test", "test")
ID_SPLITS = ("train", "id_val", "id_test")

# The headline (ID metric, OOD metric) of each benchmark (DESIGN.md), WILDS's names.
HEADLINE_METRICS = {"fmow": ("acc_avg", "acc_worst_region"), "iwildcam": ("F1-macro_all", "F1-macro_all")}
# Metadata fields reported per group (per-group tables, worst groups).
EVAL_GROUPS = {"fmow": ("region", "year"), "iwildcam": ("location",)}
N_CLASSES = {"fmow": 62, "iwildcam": 182}

METHODS = ("zeroshot", "linear_probe", "finetune", "lp_ft", "vision_only", "vision_only_probe")
PROBE_METHODS = ("linear_probe", "vision_only_probe")  # no learning rate: their L2 strength is chosen on val


def headline_metric(dataset: str, split: str) -> str:
    """The benchmark's number for a split: the ID metric on train/id_val/id_test, the OOD one on val/test."""
    if dataset not in HEADLINE_METRICS:
        raise ValueError(f"dataset={dataset!r} has no headline metric; known: {sorted(HEADLINE_METRICS)}")
    id_metric, ood_metric = HEADLINE_METRICS[dataset]
    return id_metric if split in ID_SPLITS else ood_metric
