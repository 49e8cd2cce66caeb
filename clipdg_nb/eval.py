"""Evaluation: batched prediction, WILDS metrics per split, prediction tables, failure cases."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .data import dataset_spec, group_labels, metadata_column
from .metrics import wilds_metrics

TOP_K = 5


def autocast_for(device: torch.device, precision: str):
    """Autocast context for a precision name; fp32 (and fp16 on CPU) run without autocast."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def image_batches(images: Dataset, batch_size: int, num_workers: int, device: torch.device):
    """Batches of uint8 images. A decoded cache without augmentation is sliced directly (one memmap
    read per batch), which is ~1000x faster than assembling items one by one."""
    from .images import ArrayImages
    if isinstance(images, ArrayImages) and images.augment is None:
        return ((torch.from_numpy(np.array(images.images[i:i + batch_size])), None, None)  # a writable copy
                for i in range(0, len(images), batch_size))
    return DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: Dataset, normalize, device: torch.device,
                   batch_size: int = 512, precision: str = "fp32", num_workers: int = 0) -> torch.Tensor:
    """Logits [N, C] (float32, CPU) of a model over a dataset of (uint8 image, label, idx) items."""
    loader = image_batches(images, batch_size, num_workers, device)
    was_training = model.training
    model.eval()
    # A trainable-text classifier embeds its prompts once for the whole pass, not once per batch.
    cache = model.cached_text_features() if hasattr(model, "cached_text_features") else nullcontext()
    out = []
    try:
        with cache, autocast_for(device, precision):
            for x, _, _ in loader:
                out.append(model(normalize(x.to(device, non_blocking=True))).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def prediction_frame(dataset, indices, logits: torch.Tensor, split: str, k: int = TOP_K) -> pd.DataFrame:
    """The predictions contract: idx, y_true, y_pred, p_top1, top-k labels/probs, group fields."""
    indices = np.asarray(indices, dtype=np.int64)
    y_true = np.asarray(dataset.y_array)[indices].astype(np.int64)
    probs = torch.softmax(logits.float(), dim=1)
    top_p, top_l = probs.topk(min(k, probs.shape[1]), dim=1)
    frame = pd.DataFrame({
        "idx": indices,
        "y_true": y_true,
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
