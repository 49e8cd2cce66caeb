"""Tensors from decoded images: normalisation on the device, datasets a loader iterates, the
reference augmentation, and `image_split` (the cache by default, PIL from disk without it)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from .views import decode_split
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, load_uint8


def reference_augmentation() -> T.Compose:
    """The reference study's training augmentation, per sample on uint8 CHW tensors: the reference
    that `images.augment.BatchAugment` reproduces batched on the device (tests compare the two)."""
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
    """Items (uint8 CHW tensor, label, WILDS index) from decoded images (an ndarray or `CachedImages`).

    A loader asks for whole batches (`__getitems__`): one sorted read of the memmap rows, no
    per-item Python work; augmentation happens later, batched, on the device (`images.augment`).
    """

    def __init__(self, images, labels: Sequence[int], indices: Sequence[int]):
        if not len(images) == len(labels) == len(indices):
            raise ValueError(f"images ({len(images)}), labels ({len(labels)}) and indices ({len(indices)}) differ in length")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int):
        img = torch.from_numpy(np.array(self.images[k])).permute(2, 0, 1)
        return img, self.labels[k], self.indices[k]

    def __getitems__(self, ks: list[int]):
        ks = np.asarray(ks, dtype=np.int64)
        order = np.argsort(ks, kind="stable")  # read the rows in file order, then put them back
        rows = np.empty((len(ks),) + tuple(np.shape(self.images[0])), dtype=np.uint8)
        rows[order] = self.images[ks[order]]
        x = torch.from_numpy(rows).permute(0, 3, 1, 2)
        return x, self.labels[ks], self.indices[ks]


class PILImages(Dataset):
    """The same items read from disk each time (no cache)."""

    def __init__(self, dataset, indices: Sequence[int], image_size: int, draft: bool = DEFAULT_DRAFT):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.image_size, self.draft = int(image_size), bool(draft)
        self.labels = torch.as_tensor(np.asarray(dataset.y_array)[self.indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        arr = load_uint8(self.dataset, self.indices[k], self.image_size, self.draft)
        return torch.from_numpy(arr).permute(2, 0, 1), self.labels[k], torch.tensor(int(self.indices[k]))


def image_split(dataset, indices, image_size: int, *, cache: bool = True, cache_dir=DEFAULT_CACHE,
                draft: bool = DEFAULT_DRAFT, workers: int = 4) -> Dataset:
    """The dataset a loader iterates: the per-split decoded cache by default (`cache_dir=None`: decoded
    into memory), PIL from disk with `cache=False`."""
    indices = np.asarray(indices, dtype=np.int64)
    if not cache:
        return PILImages(dataset, indices, image_size, draft=draft)
    images = decode_split(dataset, indices, image_size, cache_dir, workers, draft=draft)
    return ArrayImages(images, np.asarray(dataset.y_array)[indices], indices)
