"""Frozen image features: encode a split once per (model, weights, preprocessing) and reuse it.

Zero-shot heads and linear probes only need features, so each split is encoded once and cached
under `<cache_dir>/features/`; a few-shot subset is an index into its split's features, never a
separate entry. Writers take a file lock and write to a unique temporary name, so concurrent runs
never see half a file; a damaged entry is rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F


def _image_encoder(model):
    """The callable giving image features: .features (our classifiers), .encode_image (CLIP), or the module."""
    for attr in ("features", "encode_image"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


def _batches(images, batch_size: int) -> Iterable[tuple[torch.Tensor, Any]]:
    """(images, labels-or-None) from a tensor or from a loader of tensors / (x, y, ...) tuples."""
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size], None
        return
    for batch in images:
        if isinstance(batch, (tuple, list)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


def encode_images(model, images, batch_size: int = 256, device="cpu", normalize: bool = True,
                  with_labels: bool = False):
    """Image features [N, D] (float32, CPU): batched, inference mode, eval mode (train mode restored).

    `images` is a tensor [N, 3, H, W] or a loader yielding tensors or (x, y, ...) tuples.
    """
    if hasattr(model, "model") and hasattr(model, "tokenizer"):
        model = model.model  # a ClipBundle
    model = model.to(device)
    was_training = model.training
    model.eval()
    encode = _image_encoder(model)
    feats, labels = [], []
    try:
        with torch.inference_mode():
            for x, y in _batches(images, batch_size):
                f = encode(x.to(device, non_blocking=True)).float()
                feats.append((F.normalize(f, dim=-1) if normalize else f).cpu())
                if y is not None:
                    labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was_training)
    out = torch.cat(feats).clone()  # cloned outside inference mode, so it can enter autograd
    if with_labels:
        return out, (torch.cat(labels).clone() if labels else None)
    return out


def feature_key(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_split_features(path: Path, compute) -> torch.Tensor:
    """The tensor at `path`, or `compute()` written there (atomically, under a lock) and returned.

    Two processes asking for the same entry compute it once: the second waits on the lock and
    then reads. A file that does not load is rebuilt with a warning naming it.
    """
    from filelock import FileLock

    from ..runs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return torch.load(path, weights_only=True)
            except Exception as err:  # truncated or foreign file: rebuild it
                warnings.warn(f"feature cache {path} is damaged ({type(err).__name__}: {err}); rebuilding it",
                              stacklevel=2)
        feats = compute()
        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
        return feats


def subset_rows(split_indices: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Positions of `indices` (full-dataset ids) within a split's ascending index array."""
    pos = np.searchsorted(split_indices, indices)
    if len(indices) and (pos.max() >= len(split_indices) or (split_indices[pos] != indices).any()):
        raise ValueError("some indices are not in the split")
    return pos
