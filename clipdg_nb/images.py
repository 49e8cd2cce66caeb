"""Images to tensors: decode once into a uint8 cache, normalise and augment tensors.

Decoding and resizing the same JPEG/PNG every epoch dominates small-model training. Each split is
decoded once, resized exactly as open_clip's eval preprocessing does (shorter side to the model's
size, bicubic, centre crop), into a uint8 array memory-mapped under `outputs/cache/decoded/`.
Normalising that array reproduces open_clip's `preprocess(img)` (which also resizes a uint8 PIL
image before `ToTensor`). `PILImages` is the same pipeline straight from disk, for splits too
large to cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

DEFAULT_CACHE = Path("outputs") / "cache" / "decoded"


def resize_crop(image_size: int) -> T.Compose:
    """open_clip's eval geometry (resize_mode 'shortest', bicubic), up to the uint8 image."""
    return T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)])


def reference_augmentation() -> T.Compose:
    """The reference study's training augmentation, applied to uint8 CHW tensors."""
    return T.Compose([T.RandomHorizontalFlip(), T.ColorJitter(0.1, 0.1, 0.1), T.RandomRotation(2)])


def _load_uint8(dataset, idx: int, geometry) -> np.ndarray:
    return np.array(geometry(dataset.get_input(int(idx)).convert("RGB")), dtype=np.uint8)


def _cache_key(dataset, indices: np.ndarray, image_size: int) -> str:
    # Source files: the metadata CSV's size and mtime stand for the release; indices name the images.
    data_dir = Path(dataset.data_dir)
    stats = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(data_dir.glob("*.csv"))]
    blob = json.dumps([dataset.dataset_name, dataset.version, str(data_dir.resolve()), image_size, stats])
    digest = hashlib.sha256(blob.encode() + np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:20]


def decode_split(dataset, indices: Sequence[int], image_size: int, cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
                 workers: int = 4) -> np.ndarray:
    """uint8 array [N, H, W, 3] of the given images, decoded once and cached (memory-mapped).

    `cache_dir=None` decodes into memory without touching the disk.
    """
    indices = np.asarray(indices, dtype=np.int64)
    geometry = resize_crop(image_size)
    shape = (len(indices), image_size, image_size, 3)
    if cache_dir is None:
        out = np.empty(shape, dtype=np.uint8)
        path = None
    else:
        cache_dir = Path(cache_dir)
        path = cache_dir / f"{dataset.dataset_name}-{image_size}px-{_cache_key(dataset, indices, image_size)}.npy"
        if path.exists():
            return np.load(path, mmap_mode="r")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    # PIL releases the GIL while decoding, so threads scale on the cores there are.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, arr in enumerate(pool.map(lambda i: _load_uint8(dataset, i, geometry), indices, chunksize=64)):
            out[k] = arr
    if path is None:
        return out
    out.flush()
    del out
    os.replace(partial, path)  # a killed decode never leaves a cache entry that looks complete
    return np.load(path, mmap_mode="r")


class Normalize(torch.nn.Module):
    """uint8 NCHW (or NHWC) batch -> normalised float, done on whatever device the batch is on."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)


class ArrayImages(Dataset):
    """Items (uint8 CHW tensor, label, WILDS index) from a decoded array; optional tensor augmentation."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], indices: Sequence[int], augment=None):
        if not len(images) == len(labels) == len(indices):
            raise ValueError(f"images ({len(images)}), labels ({len(labels)}) and indices ({len(indices)}) differ in length")
        self.images, self.augment = images, augment
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int):
        img = torch.from_numpy(np.array(self.images[k])).permute(2, 0, 1)
        if self.augment is not None:
            img = self.augment(img)
        return img, self.labels[k], self.indices[k]


class PILImages(Dataset):
    """The same items read from disk each time (for splits too large to cache)."""

    def __init__(self, dataset, indices: Sequence[int], image_size: int, augment=None):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.geometry, self.augment = resize_crop(image_size), augment
        self.labels = torch.as_tensor(np.asarray(dataset.y_array)[self.indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        img = torch.from_numpy(_load_uint8(self.dataset, self.indices[k], self.geometry)).permute(2, 0, 1)
        if self.augment is not None:
            img = self.augment(img)
        return img, self.labels[k], torch.tensor(int(self.indices[k]))


def image_split(dataset, indices, image_size: int, *, cache: bool = True, cache_dir=DEFAULT_CACHE,
                augment=None) -> Dataset:
    """The dataset a loader iterates: the decoded cache by default, PIL from disk with `cache=False`."""
    indices = np.asarray(indices, dtype=np.int64)
    if not cache:
        return PILImages(dataset, indices, image_size, augment)
    images = decode_split(dataset, indices, image_size, cache_dir)
    return ArrayImages(images, np.asarray(dataset.y_array)[indices], indices, augment)
