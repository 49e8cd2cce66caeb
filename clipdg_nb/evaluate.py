"""Evaluation: batched prediction, WILDS's own metrics per split, prediction tables, accuracy per
group, failure cases. Metric names and numbers are exactly `dataset.eval(...)`'s (no torch_scatter:
see `data.wilds_compat`)."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .data import GROUP_FIELDS, dataset_spec, group_labels, metadata_column
from .devices import autocast

TOP_K = 5


def wilds_metrics(dataset, indices, y_pred) -> dict[str, float]:
    """`dataset.eval` on predicted labels for the given full-dataset indices, as plain floats."""
    indices = np.array(indices, dtype=np.int64)  # a writable copy (parquet columns are read-only)
    y_true = np.asarray(dataset.y_array)[indices]
    results, _ = dataset.eval(torch.as_tensor(np.array(y_pred, dtype=np.int64)), torch.as_tensor(y_true),
                              dataset.metadata_array[torch.as_tensor(indices)])
    return {k: float(v) for k, v in results.items()}


def image_batches(images: Dataset, batch_size: int, num_workers: int, device: torch.device):
    """Batches of (uint8 images, labels, idx). A decoded cache without augmentation is sliced
    directly (one memmap read per batch), ~1000x faster than assembling items one by one."""
    from .images import ArrayImages
    if isinstance(images, ArrayImages):
        return ((torch.from_numpy(np.array(images.images[i:i + batch_size])), None, None)  # a writable copy
                for i in range(0, len(images), batch_size))
    return DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: Dataset, normalize, device: torch.device,
                   batch_size: int = 512, precision: str = "fp32", num_workers: int = 0) -> torch.Tensor:
    """Logits [N, C] (float32, CPU) of a model over a dataset of (uint8 image, label, idx) items."""
    was_training = model.training
    model.eval()
    # A trainable-text classifier embeds its prompts once for the whole pass, not once per batch.
    cache = model.cached_text_features() if hasattr(model, "cached_text_features") else nullcontext()
    out = []
    try:
        with cache, autocast(device, precision):
            for x, _, _ in image_batches(images, batch_size, num_workers, device):
                out.append(model(normalize(x.to(device, non_blocking=True))).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def prediction_frame(dataset, indices, logits: torch.Tensor, split: str, k: int = TOP_K) -> pd.DataFrame:
    """The predictions contract: idx, y_true, y_pred, p_top1, p_true, top-k labels / probs, group fields."""
    indices = np.asarray(indices, dtype=np.int64)
    y_true = np.asarray(dataset.y_array)[indices].astype(np.int64)
    probs = torch.softmax(logits.float(), dim=1)
    top_p, top_l = probs.topk(min(k, probs.shape[1]), dim=1)
    frame = pd.DataFrame({
        "idx": indices, "y_true": y_true,
        "y_pred": top_l[:, 0].numpy().astype(np.int64),
        "p_top1": top_p[:, 0].numpy().astype(np.float64),
        "p_true": probs[torch.arange(len(indices)), torch.from_numpy(y_true)].numpy(),
        "topk_labels": list(top_l.numpy().astype(np.int64)),
        "topk_probs": list(top_p.numpy().astype(np.float64)),
        "split": split,
    })
    for field in dataset_spec(dataset.dataset_name).eval_groups:
        frame[field] = group_labels(dataset, field, metadata_column(dataset, field)[indices])
    return frame


def evaluate_logits(dataset, indices, logits: torch.Tensor, split: str):
    """(WILDS metrics, prediction frame) for one split."""
    frame = prediction_frame(dataset, indices, logits, split)
    return wilds_metrics(dataset, indices, frame["y_pred"].to_numpy()), frame


def failure_cases(predictions: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    """Wrong predictions ranked by the model's confidence in the wrong class (most confident first)."""
    wrong = predictions[predictions["y_pred"] != predictions["y_true"]]
    return wrong.sort_values(["p_top1", "idx"], ascending=[False, True]).head(n).reset_index(drop=True)


def natural_key(values: pd.Series) -> pd.Series:
    """Sort key that orders numbers as numbers (locations 2 before 10) and names alphabetically."""
    numeric = pd.to_numeric(values, errors="coerce")
    return numeric if numeric.notna().all() else values.astype(str)


def group_accuracy(predictions: pd.DataFrame, fields=None) -> pd.DataFrame:
    """Accuracy and count per group, per split and group field present in a predictions frame
    (FMoW region and year, iWildCam location): columns split, field, group, value, n, groups in
    natural order."""
    fields = [f for f in (fields or GROUP_FIELDS) if f in predictions.columns]
    frame = predictions if "split" in predictions.columns else predictions.assign(split="")
    correct = frame["y_true"] == frame["y_pred"]
    parts = []
    for field in fields:
        table = correct.groupby([frame["split"], frame[field]], sort=False).agg(value="mean", n="count").reset_index()
        table = table.rename(columns={field: "group"}).assign(field=field)
        parts.append(table.sort_values(["split", "group"], key=lambda s: natural_key(s) if s.name == "group" else s))
    columns = ["split", "field", "group", "value", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
