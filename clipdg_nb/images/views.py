"""What a loader iterates: a subset is a view into its split's decode cache (`CachedImages`, an
index, never a copy), served as uint8 CHW batches (`ArrayImages`; `PILImages` reads from disk instead),
normalised on the device (`Normalize`). `prepare_splits` fills whole splits with all cores (`clipdg prepare`)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import SplitCache
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, load_uint8


class CachedImages:
    """A read-only array-like `[len(rows), H, W, 3]` uint8: rows of one split cache, read from its
    memory map on access. Integer indexing gives one image (a view into the map); slices and index
    arrays a new ndarray; `np.asarray(x)` everything. Pickles by path (DataLoader workers re-open the map)."""

    def __init__(self, path: os.PathLike, rows: np.ndarray, image_size: int):
        self.path, self.rows, self.image_size = Path(path), np.asarray(rows, dtype=np.int64), int(image_size)
        self.map = np.load(self.path, mmap_mode="r")

    def __reduce__(self):
        return CachedImages, (self.path, self.rows, self.image_size)

    @property
    def shape(self) -> tuple:
        return (len(self.rows), self.image_size, self.image_size, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):  # numpy raises the IndexError of an index out of range
        return self.map[self.rows[key]]

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("CachedImages are rows of a memory map: making one array of them needs a copy")
        return np.array(self[:], dtype=dtype)  # always a fresh, writable array

    def __repr__(self) -> str:
        return f"CachedImages({len(self)} images, {self.image_size} px, from {self.path.name})"


def _split_of(dataset, indices: np.ndarray) -> str:
    """The one split all `indices` belong to: a loader's subset, and a cache entry, lie in one split."""
    names, ids = {int(v): k for k, v in dataset.split_dict.items()}, np.unique(np.asarray(dataset.split_array)[indices])
    if len(ids) != 1 or int(ids[0]) not in names:
        raise ValueError(f"indices must lie in one split of {dataset.dataset_name}; these lie in "
                         f"{[names.get(int(i), f'no split (id {i})') for i in ids]}: ask for each split apart")
    return names[int(ids[0])]


def decode_split(dataset, indices: Sequence[int], image_size: int, cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
                 workers: int = 4, *, draft: bool = DEFAULT_DRAFT, verify: bool = True):
    """uint8 images [N, H, W, 3] of `indices` (of one split). With a `cache_dir`: a `CachedImages`
    view of the split's cache, decoding only rows no process decoded before; rows this process has
    not read are checked against their checksums first (`SplitCache.verify`; `verify=False`: benchmarks
    only). `cache_dir=None`: an ndarray decoded into memory, the disk untouched."""
    indices = np.asarray(indices, dtype=np.int64)
    if cache_dir is None:
        out = np.empty((len(indices), image_size, image_size, 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for k, arr in enumerate(pool.map(lambda i: load_uint8(dataset, i, image_size, draft), indices)):
                out[k] = arr
        return out
    cache = SplitCache(dataset, _split_of(dataset, indices), image_size, cache_dir, draft=draft)
    rows = cache.rows_of(indices)
    cache.ensure(rows, workers=workers)
    view = CachedImages(cache.path, rows, image_size)
    if verify:  # through the view's own map: the pages checked are then mapped for the reads
        cache.verify(rows, workers=workers, array=view.map)
    return view


def prepare_splits(dataset, splits: Sequence[str], image_size: int, cache_dir=DEFAULT_CACHE,
                   workers: int | None = None, progress: bool = True, draft: bool = DEFAULT_DRAFT) -> dict:
    """Fill the whole cache of each split with `workers` threads (default: all cores); safe while
    training processes read or fill the same caches. `draft` must match training's (it is in the key).
    Returns {split: {"path", "images", "decoded"}} (`decoded`: images this call decoded)."""
    out = {}
    for split in splits:
        cache = SplitCache(dataset, split, image_size, cache_dir, draft=draft)
        decoded = cache.ensure(None, workers=workers or os.cpu_count() or 1, progress=progress)
        out[split] = {"path": cache.path, "images": len(cache), "decoded": decoded}
    return out


class Normalize(torch.nn.Module):
    """uint8 NCHW (or NHWC: evaluation's slices of the cache) batch -> normalised float, on the batch's device."""

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
    A loader asks for whole batches (`__getitems__`): one sorted read of the memmap rows; augmentation
    happens later, batched, on the device (`images.augment`)."""

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
