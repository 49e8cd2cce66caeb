"""Subsets as views: a request of dataset indices is resolved to the split caches that hold them
and served as an index into them (`CachedImages`), never a copy; `prepare_splits` fills whole
splits with all cores (`clipdg prepare`)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .cache import SplitCache
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, load_uint8


def _resolve(dataset, indices: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(split, positions in the request, rows in that split's cache) for each split the request spans."""
    split_array = np.asarray(dataset.split_array)
    if indices.size and (indices.min() < 0 or indices.max() >= len(split_array)):
        raise IndexError(f"indices must lie in [0, {len(split_array)}) for {dataset.dataset_name}; "
                         f"got {indices.min()}..{indices.max()}")
    names = {int(v): k for k, v in dataset.split_dict.items()}
    ids = split_array[indices]
    out = []
    for sid in np.unique(ids):
        if int(sid) not in names:
            bad = indices[ids == sid][:5]
            raise ValueError(f"indices {bad.tolist()} belong to no split of {dataset.dataset_name} (split id {sid})")
        members = np.flatnonzero(split_array == sid)
        pos = np.flatnonzero(ids == sid)
        out.append((names[int(sid)], pos, np.searchsorted(members, indices[pos])))
    return out


class CachedImages:
    """A read-only array-like `[len(indices), H, W, 3]` uint8 over one or more split caches.

    Item k is row `rows[k]` of split cache `part[k]`, read from the memory map on access, so a subset
    costs an index array, not a copy. Integer indexing gives one image (a view into the map); slices
    and index arrays give a new ndarray; `np.asarray(x)` materialises everything. Pickles by path
    (DataLoader workers re-open the maps instead of receiving the pixels).
    """

    def __init__(self, paths: Sequence[os.PathLike], part: np.ndarray, rows: np.ndarray, image_size: int):
        self.paths = [Path(p) for p in paths]
        self.part = np.asarray(part, dtype=np.int32)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.image_size = int(image_size)
        self._open()

    def _open(self) -> None:
        self.maps = [np.load(p, mmap_mode="r") for p in self.paths]
        self._contiguous = (len(self.paths) == 1 and len(self.rows) > 0
                            and bool(np.all(np.diff(self.rows) == 1)))

    def __getstate__(self):
        return {"paths": self.paths, "part": self.part, "rows": self.rows, "image_size": self.image_size}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    @property
    def shape(self) -> tuple:
        return (len(self.rows), self.image_size, self.image_size, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key)
            if not -len(self) <= k < len(self):
                raise IndexError(f"index {k} out of range for {len(self)} images")
            return self.maps[self.part[k]][self.rows[k]]
        if isinstance(key, slice) and self._contiguous and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            r0 = self.rows[0]
            return np.asarray(self.maps[0][r0 + start:r0 + max(start, stop)])
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


def cached_images(dataset, indices: Sequence[int], image_size: int, cache_dir=DEFAULT_CACHE, *,
                  draft: bool = DEFAULT_DRAFT, workers: int = 4, progress: bool = False,
                  verify: bool = True) -> CachedImages:
    """The images of `indices` (any mix of splits), served from the per-split caches, decoding only
    those not decoded before (by this or any other process). Rows this process has not read before
    are checked against their checksums first (`SplitCache.verify`; damaged ones are decoded again,
    with a `CacheRebuiltWarning`); `verify=False` skips that (benchmarks only)."""
    indices = np.asarray(indices, dtype=np.int64)
    paths, part, rows = [], np.zeros(len(indices), dtype=np.int32), np.zeros(len(indices), dtype=np.int64)
    caches = []
    for split, pos, split_rows in _resolve(dataset, indices):
        cache = SplitCache(dataset, split, image_size, cache_dir, draft=draft)
        cache.ensure(split_rows, workers=workers, progress=progress)
        part[pos], rows[pos] = len(paths), split_rows
        paths.append(cache.path)
        caches.append((cache, split_rows))
    view = CachedImages(paths, part, rows, image_size)
    if verify:  # through the view's own maps: the pages checked are then mapped for the reads
        for k, (cache, split_rows) in enumerate(caches):
            cache.verify(split_rows, workers=workers, array=view.maps[k])
    return view


def prepare_splits(dataset, splits: Sequence[str], image_size: int, cache_dir=DEFAULT_CACHE,
                   workers: int | None = None, progress: bool = True, draft: bool = DEFAULT_DRAFT) -> dict:
    """Fill the whole cache of each split, decoding with `workers` threads (default: all cores).

    Returns {split: {"path", "images", "decoded"}} (`decoded`: images this call decoded; 0 when the
    split was already complete). Safe to run while training processes read or fill the same caches.
    `draft` must match what training will ask for (it is part of the cache key).
    """
    workers = workers or os.cpu_count() or 1
    out = {}
    for split in splits:
        cache = SplitCache(dataset, split, image_size, cache_dir, draft=draft)
        decoded = cache.ensure(None, workers=workers, progress=progress)
        out[split] = {"path": cache.path, "images": len(cache), "decoded": decoded}
    return out


def decode_split(dataset, indices: Sequence[int], image_size: int, cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
                 workers: int = 4, *, draft: bool = DEFAULT_DRAFT, progress: bool = False):
    """uint8 images [N, H, W, 3] of the given indices: a `CachedImages` view of the per-split caches
    under `cache_dir`, or, with `cache_dir=None`, an ndarray decoded into memory without touching the disk.
    """
    if cache_dir is not None:
        return cached_images(dataset, indices, image_size, cache_dir, draft=draft, workers=workers, progress=progress)
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(indices), image_size, image_size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, arr in enumerate(pool.map(lambda i: load_uint8(dataset, i, image_size, draft), indices)):
            out[k] = arr
    return out
