"""Frozen image features: each split encoded once per (weights' digest, preprocessing, decoded
images' identity) and cached with its sha256 and that identity, both checked on every load."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from filelock import FileLock

from ..fingerprint import CacheRebuiltWarning, file_digest, identity_mismatch
from ..paths import atomic_path, resolve


def encode_images(model, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256, device="cpu",
                  normalize: bool = True) -> torch.Tensor:
    """Image features [N, D] (float32, CPU) of a tensor [N, 3, H, W] (in batches of `batch_size`) or
    of batches of images: inference mode, eval mode (train mode restored)."""
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    model = model.to(device)
    was_training = model.training
    model.eval()
    # .features of our classifiers, .encode_image of a CLIP, or the module itself (an image tower)
    encode = next((getattr(model, a) for a in ("features", "encode_image") if hasattr(model, a)), model)
    feats = []
    try:
        with torch.inference_mode():
            for x in images:
                f = encode(x.to(device, non_blocking=True)).float()
                feats.append((F.normalize(f, dim=-1) if normalize else f).cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats).clone()  # cloned outside inference mode, so it can enter autograd


def content_key(preprocessing: dict, memo_dir: str | os.PathLike | None = None) -> dict:
    """The preprocessing with each weights file it names replaced by 'sha256:<digest of its bytes>'
    (tags and None unchanged; digests memoised under `memo_dir`, see `fingerprint.file_digest`)."""
    out = dict(preprocessing)
    for name in ("pretrained", "weights"):  # the fields that may name a weights file
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
    atomically under a lock (two processes compute an entry once). A file that does not load or
    match is recomputed, with a `CacheRebuiltWarning` naming it and why."""
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
