"""Frozen image features: encode a split once per (model, weights, preprocessing) and reuse it.

Zero-shot heads and linear probes only need features, so each split is encoded once and cached under
`<cache_dir>/features/` (a subset is an index into it), written to a temporary name under a file lock.
The key holds the weights' digest (`content_key`) and the decoded images' identity
(`images.SplitCache.key`); each file holds the features, their sha256 and that identity, all checked
on load: a file that fails any check is recomputed, with a `CacheRebuiltWarning` naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..fingerprint import CacheRebuiltWarning, file_digest, identity_mismatch
from ..paths import resolve


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


WEIGHT_FIELDS = ("pretrained", "weights")  # fields of a preprocessing dict that may name a weights file


def content_key(preprocessing: dict, memo_dir: str | os.PathLike | None = None) -> dict:
    """The preprocessing with each weights file it names replaced by 'sha256:<digest of its bytes>'
    (tags and None unchanged; digests memoised under `memo_dir`, see `fingerprint.file_digest`)."""
    out = dict(preprocessing)
    for name in WEIGHT_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and value != "imagenet" and resolve(value).is_file():
            out[name] = "sha256:" + file_digest(resolve(value), memo_dir)
    return out


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 over a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _load_checked(path: Path, identity: dict) -> torch.Tensor:
    """The features of a cache file, or ValueError saying why they are not to be trusted."""
    stored = torch.load(path, weights_only=True)
    if not (isinstance(stored, dict) and isinstance(stored.get("features"), torch.Tensor)
            and isinstance(stored.get("sha256"), str)):
        raise ValueError("not a checksummed feature file")
    wrong = identity_mismatch(json.loads(stored.get("identity", "null")), identity)
    if wrong:
        raise ValueError(wrong)
    if tensor_digest(stored["features"]) != stored["sha256"]:
        raise ValueError("its bytes do not match the sha256 stored with them")
    return stored["features"]


def cached_split_features(folder: Path, identity: dict, compute) -> torch.Tensor:
    """The features of `identity` (a JSON-able dict with 'dataset' and 'split': everything they are
    computed from) from `<folder>/<dataset>-<split>-<key>.pt`, or `compute()` written there
    (atomically, under a lock) and returned.

    Two processes asking for the same entry compute it once: the second waits on the lock and
    then reads. Every load checks the stored identity and sha256; a file that does not load or
    does not match is recomputed with a `CacheRebuiltWarning` naming it and why.
    """
    from filelock import FileLock

    from ..paths import atomic_path

    stated = json.dumps(identity, sort_keys=True, default=str)
    path = Path(folder) / f"{identity['dataset']}-{identity['split']}-{hashlib.sha256(stated.encode()).hexdigest()[:20]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return _load_checked(path, identity)
            except Exception as err:  # truncated, flipped or another entry's file: rebuild it
                warnings.warn(f"feature cache {path} is damaged or not what its name says ({type(err).__name__}: "
                              f"{err}); computing the features again", CacheRebuiltWarning, stacklevel=2)
        feats = compute()
        with atomic_path(path) as tmp:
            torch.save({"features": feats, "sha256": tensor_digest(feats), "identity": stated}, tmp)
        return feats


def subset_rows(split_indices: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Positions of `indices` (full-dataset ids) within a split's ascending index array."""
    pos = np.searchsorted(split_indices, indices)
    if len(indices) and (pos.max() >= len(split_indices) or (split_indices[pos] != indices).any()):
        raise ValueError("some indices are not in the split")
    return pos
