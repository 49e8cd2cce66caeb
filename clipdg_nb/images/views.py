"""What a loader iterates: a subset is a view into the per-split decode caches (`CachedImages`, an
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
    """A read-only array-like `[len(indices), H, W, 3]` uint8 over one or more split caches.

    Item k is row `rows[k]` of split cache `part[k]`, read from the memory map on access. Integer
    indexing gives one image (a view into the map); slices and index arrays a new ndarray;
    `np.asarray(x)` everything. Pickles by path (DataLoader workers re-open the maps).
    """

    def __init__(self, paths: Sequence[os.PathLike], part: np.ndarray, rows: np.ndarray, image_size: int):
        self.paths = [Path(p) for p in paths]
        self.part = np.asarray(part, dtype=np.int32)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.image_size = int(image_size)
        self.maps = [np.load(p, mmap_mode="r") for p in self.paths]

    def __reduce__(self):
        return CachedImages, (self.paths, self.part, self.rows, self.image_size)

    @property
    def shape(self) -> tuple:
        return (len(self.rows), self.image_size, self.image_size, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):  # numpy raises the IndexError of an index out of range
            return self.maps[self.part[key]][self.rows[key]]
        part, rows = self.part[key], self.rows[key]
        if len(self.maps) == 1:
            return self.maps[0][rows]
        out = np.empty((len(rows), self.image_size, self.image_size, 3), dtype=np.uint8)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.maps[p][rows[sel]]
        return out

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("CachedImages are rows of memory maps: making one array of them needs a copy")
        arr = self[:] if len(self) else np.empty(self.shape, dtype=np.uint8)
        return np.array(arr, dtype=dtype)  # always a fresh, writable array

    def __repr__(self) -> str:
        return f"CachedImages({len(self)} images, {self.image_size} px, from {[p.name for p in self.paths]})"


def _by_split(dataset, indices: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(split, positions in the request) for each split the request spans."""
    split_array = np.asarray(dataset.split_array)
    if indices.size and (indices.min() < 0 or indices.max() >= len(split_array)):
        raise IndexError(f"indices must lie in [0, {len(split_array)}) for {dataset.dataset_name}; "
                         f"got {indices.min()}..{indices.max()}")
    names, ids = {int(v): k for k, v in dataset.split_dict.items()}, split_array[indices]
    for sid in np.unique(ids):
        if int(sid) not in names:
            raise ValueError(f"indices {indices[ids == sid][:5].tolist()} belong to no split of "
                             f"{dataset.dataset_name} (split id {sid})")
    return [(names[int(sid)], np.flatnonzero(ids == sid)) for sid in np.unique(ids)]


def decode_split(dataset, indices: Sequence[int], image_size: int, cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
                 workers: int = 4, *, draft: bool = DEFAULT_DRAFT, verify: bool = True):
    """uint8 images [N, H, W, 3] of `indices` (any mix of splits). With a `cache_dir`: a `CachedImages`
    view of the per-split caches, decoding only rows no process decoded before; rows this process has
    not read are checked against their checksums first (`SplitCache.verify`; `verify=False`: benchmarks
    only). `cache_dir=None`: an ndarray decoded into memory, the disk untouched."""
    indices = np.asarray(indices, dtype=np.int64)
    if cache_dir is None:
        out = np.empty((len(indices), image_size, image_size, 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for k, arr in enumerate(pool.map(lambda i: load_uint8(dataset, i, image_size, draft), indices)):
                out[k] = arr
        return out
    part, rows = np.zeros(len(indices), dtype=np.int32), np.zeros(len(indices), dtype=np.int64)
    caches = []
    for k, (split, pos) in enumerate(_by_split(dataset, indices)):
        cache = SplitCache(dataset, split, image_size, cache_dir, draft=draft)
        part[pos], rows[pos] = k, cache.rows_of(indices[pos])
        cache.ensure(rows[pos], workers=workers)
        caches.append(cache)
    view = CachedImages([c.path for c in caches], part, rows, image_size)
    if verify:  # through the view's own maps: the pages checked are then mapped for the reads
        for k, cache in enumerate(caches):
            cache.verify(rows[part == k], workers=workers, array=view.maps[k])
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
