"""Tensors from decoded images: normalisation on the device, datasets a loader iterates, the
reference augmentation, and `image_split` (the cache by default, PIL from disk without it)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from .views import decode_split
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, _load_uint8


def reference_augmentation() -> T.Compose:
    """The reference study's training augmentation, applied to uint8 CHW tensors."""
    return T.Compose([T.RandomHorizontalFlip(), T.ColorJitter(0.1, 0.1, 0.1), T.RandomRotation(2)])


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
    """Items (uint8 CHW tensor, label, WILDS index) from decoded images (an ndarray or `CachedImages`);
    optional tensor augmentation."""

    def __init__(self, images, labels: Sequence[int], indices: Sequence[int], augment=None):
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
    """The same items read from disk each time (no cache)."""

    def __init__(self, dataset, indices: Sequence[int], image_size: int, augment=None, draft: bool = DEFAULT_DRAFT):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.image_size, self.draft, self.augment = int(image_size), bool(draft), augment
        self.labels = torch.as_tensor(np.asarray(dataset.y_array)[self.indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        arr = _load_uint8(self.dataset, self.indices[k], self.image_size, self.draft)
        img = torch.from_numpy(arr).permute(2, 0, 1)
        if self.augment is not None:
            img = self.augment(img)
        return img, self.labels[k], torch.tensor(int(self.indices[k]))


def image_split(dataset, indices, image_size: int, *, cache: bool = True, cache_dir=DEFAULT_CACHE,
                augment=None, draft: bool = DEFAULT_DRAFT, workers: int = 4) -> Dataset:
    """The dataset a loader iterates: the per-split decoded cache by default (`cache_dir=None`: decoded
    into memory), PIL from disk with `cache=False`."""
    indices = np.asarray(indices, dtype=np.int64)
    if not cache:
        return PILImages(dataset, indices, image_size, augment, draft=draft)
    images = decode_split(dataset, indices, image_size, cache_dir, workers, draft=draft)
    return ArrayImages(images, np.asarray(dataset.y_array)[indices], indices, augment)
