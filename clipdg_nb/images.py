"""Images to tensors: decode each image once into a per-split uint8 cache, normalise and augment tensors.

Decoding and resizing the same JPEG/PNG every epoch dominates small-model training, and the study's
grid (fractions x seeds) draws many overlapping subsets of one train split. So the cache is kept per
*split*, not per subset: one uint8 array `[N_split, H, W, 3]` memory-mapped under
`outputs/cache/decoded/`, holding every image of the split in split order (ascending dataset index),
each resized exactly as open_clip's eval preprocessing does (shorter side to the model's size,
bicubic, centre crop). A companion bitmap (`<entry>.filled.npy`, bool `[N_split]`) says which rows
are decoded. The cache fills lazily: a request decodes only its own missing rows. (The file's
blocks are reserved when it is created, after checking the free space, so a full disk is an
OSError then, not a crash in the middle of a memory-mapped write.) A subset is an
index into the array (`CachedImages`), never a copy. Normalising the pixels reproduces open_clip's
`preprocess(img)` (which also resizes a uint8 PIL image before `ToTensor`).

Layout of one entry, for (dataset, split, image size, draft mode) and a key over everything the
pixels depend on (`SplitCache` documents the key):

    <dataset>-<split>-<size>px-<full|draft>-<key>.npy         the rows (a .npy file, memory-mapped)
    <dataset>-<split>-<size>px-<full|draft>-<key>.filled.npy  which rows are decoded
    <dataset>-<split>-<size>px-<full|draft>-<key>.lock        a `filelock.FileLock`

Processes sharing a cache coordinate through the lock: whoever decodes holds it (one chunk of rows at
a time), writes the rows in place, flushes them, and only then marks them in the bitmap (written to a
unique temporary name and `os.replace`d). A crash leaves rows unmarked, to be decoded again; it never
leaves rows marked that were not written. New entries are created the same way (temporary name, then
`os.replace`, under the lock). A reader whose rows are all marked reads without taking the lock.

Requests may span several splits: each index is resolved to its split through WILDS's
`split_array`/`split_dict` and served from that split's entry.

`PILImages` is the same pipeline straight from disk, for when no cache is wanted
(`image_split(cache=False)`, the config's `image_cache=False`).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

DEFAULT_CACHE = Path("outputs") / "cache" / "decoded"

# JPEG draft decoding (see `SplitCache`) is off by default. Measured with
# benchmarks/bench_cache_grid.py on synthetic 1920x1080 JPEGs at 224 px, one thread: drafting to a
# shorter side >= 2 x 224 decoded 2.1-2.3x faster than a full decode and changed the resized pixels by
# 0.25/255 on average (>= 1 x 224: 2.8-3.1x, 0.51/255); FACTS.md has 2.4-3x and 0.55-0.85/255 on other
# JPEGs. Now that each image is decoded once per machine, the speed-up only shortens a one-time fill,
# while the difference would stay in every training and evaluation pass and make our pixels differ
# from open_clip's `preprocess` (what the reference numbers used). So exactness wins; pass
# `draft=True` (e.g. to `prepare_splits`) where the one-time decode of a full iWildCam is too slow
# (~200k JPEGs: about 1.5-3.5 core-hours in full).
DEFAULT_DRAFT = False
DRAFT_FACTOR = 2  # draft to a shorter side >= DRAFT_FACTOR * image_size before the bicubic resize
CHUNK = 256  # rows decoded (and marked) in the first hold of the lock; later holds aim at HOLD_S
HOLD_S = 2.0  # seconds a decoder holds the lock at a time, so others needing other rows get turns
YIELD_S = 0.03  # pause between holds; waiting processes poll the lock every LOCK_POLL_S
LOCK_POLL_S = 0.01
# Part of every cache key. Bump it whenever the pixels a cache holds would change (geometry, format).
PREPROCESS = "open_clip-eval:resize-shortest-bicubic+center-crop:uint8-hwc:v2"


class ImageDecodeError(OSError):
    """An image could not be read or decoded; `path` and `index` (into the WILDS dataset) say which."""

    def __init__(self, message: str, path=None, index=None):
        super().__init__(message)
        self.path, self.index = path, index


def resize_crop(image_size: int) -> T.Compose:
    """open_clip's eval geometry (resize_mode 'shortest', bicubic), up to the uint8 image."""
    return T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)])


@functools.lru_cache(maxsize=16)
def _geometry(image_size: int) -> T.Compose:
    return resize_crop(image_size)


def reference_augmentation() -> T.Compose:
    """The reference study's training augmentation, applied to uint8 CHW tensors."""
    return T.Compose([T.RandomHorizontalFlip(), T.ColorJitter(0.1, 0.1, 0.1), T.RandomRotation(2)])


# ---------------------------------------------------------------------------------------------
# Where the images are, and decoding one
# ---------------------------------------------------------------------------------------------

def _relative_names(dataset, indices: np.ndarray) -> list[str] | None:
    """Paths (relative to `dataset.data_dir`) the WILDS loader reads for these indices, or None when
    the dataset is not one whose layout we know."""
    name = getattr(dataset, "dataset_name", None)
    if name == "fmow":  # FMoWDataset.get_input: root / 'images' / f'rgb_img_{full_idxs[idx]}.png'
        return [f"images/rgb_img_{int(k)}.png" for k in np.asarray(dataset.full_idxs)[indices]]
    if name == "iwildcam":  # IWildCamDataset.get_input: data_dir / 'train' / _input_array[idx]
        return [f"train/{f}" for f in np.asarray(dataset._input_array)[indices]]
    return None


def image_path(dataset, idx: int) -> Path:
    """The file WILDS's `get_input(idx)` opens, for FMoW and iWildCam."""
    names = _relative_names(dataset, np.asarray([int(idx)]))
    if names is None:
        raise ValueError(f"no image_path for dataset {getattr(dataset, 'dataset_name', type(dataset).__name__)!r}: "
                         "only fmow and iwildcam are known")
    return Path(dataset.data_dir) / names[0]


def _decode_image(path: str, image_size: int, draft: bool = False) -> np.ndarray:
    """One image file -> uint8 [H, W, 3] in open_clip's eval geometry (optionally JPEG-drafted first)."""
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            # DCT-domain downscale by 1/2, 1/4 or 1/8, keeping both sides >= the requested size
            side = DRAFT_FACTOR * image_size
            img.draft("RGB", (side, side))
        rgb = img.convert("RGB")
    return np.array(_geometry(image_size)(rgb), dtype=np.uint8)


def _load_uint8(dataset, idx: int, image_size: int, draft: bool = False, path: str | None = None) -> np.ndarray:
    """Decode dataset[idx]'s image; errors name the file and the index."""
    idx = int(idx)
    if path is None:
        names = _relative_names(dataset, np.asarray([idx]))
        path = None if names is None else os.path.join(dataset.data_dir, names[0])
    try:
        if path is None:  # a dataset we know nothing about: its own loader, no draft
            return np.array(_geometry(image_size)(dataset.get_input(idx).convert("RGB")), dtype=np.uint8)
        return _decode_image(path, image_size, draft)
    except Exception as e:
        raise ImageDecodeError(f"could not decode image {path or '(dataset.get_input)'} (dataset index {idx}): "
                               f"{type(e).__name__}: {e}", path=path, index=idx) from e


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

def _split_members(dataset, split: str) -> np.ndarray:
    if split not in dataset.split_dict:
        raise ValueError(f"split={split!r} is not a split of {dataset.dataset_name}; choose one of {list(dataset.split_dict)}")
    return np.flatnonzero(np.asarray(dataset.split_array) == dataset.split_dict[split])


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


# ---------------------------------------------------------------------------------------------
# The per-split cache
# ---------------------------------------------------------------------------------------------

def _temp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _npy_header(path: Path) -> tuple[tuple, np.dtype, bool, int]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = reader(f)
        return tuple(shape), np.dtype(dtype), bool(fortran), f.tell()


class SplitCache:
    """The decoded images of one split of one dataset at one size and decode mode, on disk.

    The key (in the file name) covers: dataset name and version, the resolved data dir, the split and
    its member indices, the image size, the preprocessing (`PREPROCESS`), the draft mode, and every
    image file of the split: relative name, size and mtime (stat'ed once, when the object is made).
    Replacing or touching an image therefore gives a new entry; the old one stays until removed.

    `draft=True` lets PIL decode large JPEGs at 1/2, 1/4 or 1/8 scale (`Image.draft`), keeping the
    shorter side >= `DRAFT_FACTOR` x `image_size`, before the same bicubic resize + centre crop. It
    only ever applies to JPEGs (PNGs decode in full). It is off by default (`DEFAULT_DRAFT`): each
    image is decoded once, so drafting saves a one-time cost but would leave every later pass with
    pixels ~0.3-0.9/255 away from open_clip's `preprocess`.
    """

    def __init__(self, dataset, split: str, image_size: int, cache_dir=DEFAULT_CACHE, *, draft: bool = DEFAULT_DRAFT):
        self.dataset_name, self.split = dataset.dataset_name, split
        self.image_size, self.draft = int(image_size), bool(draft)
        self.indices = _split_members(dataset, split)
        names = _relative_names(dataset, self.indices)
        if names is None:
            raise ValueError(f"the decoded-image cache knows where the images of fmow and iwildcam are, not of "
                             f"{self.dataset_name!r}; use cache_dir=None (decode into memory) or image_cache=False")
        data_dir = Path(dataset.data_dir).resolve()
        self.paths = [os.path.join(data_dir, n) for n in names]
        self.shape = (len(self.indices), self.image_size, self.image_size, 3)
        self.key = self._key(dataset, data_dir, names)
        self.cache_dir = Path(cache_dir)
        stem = f"{self.dataset_name}-{split}-{self.image_size}px-{'draft' if self.draft else 'full'}-{self.key}"
        self.path = self.cache_dir / f"{stem}.npy"
        self.filled_path = self.cache_dir / f"{stem}.filled.npy"
        self.lock_path = self.cache_dir / f"{stem}.lock"

    def _key(self, dataset, data_dir: Path, names: list[str]) -> str:
        sizes = np.empty(len(names), dtype=np.int64)
        mtimes = np.empty(len(names), dtype=np.int64)
        for k, path in enumerate(self.paths):
            try:
                st = os.stat(path)
            except OSError as e:
                raise ImageDecodeError(f"image {path} (dataset index {int(self.indices[k])}) of split {self.split!r} "
                                       f"cannot be read: {e}", path=path, index=int(self.indices[k])) from e
            sizes[k], mtimes[k] = st.st_size, st.st_mtime_ns
        head = json.dumps([self.dataset_name, str(getattr(dataset, "version", "")), str(data_dir), self.split,
                           self.image_size, PREPROCESS, self.draft, DRAFT_FACTOR if self.draft else None])
        digest = hashlib.sha256(head.encode())
        for part in (self.indices.astype(np.int64).tobytes(), "\n".join(names).encode(), sizes.tobytes(), mtimes.tobytes()):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        return digest.hexdigest()[:20]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def rows_of(self, indices) -> np.ndarray:
        """Rows of these dataset indices (all must belong to this split)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = np.searchsorted(self.indices, indices)
        ok = (rows < len(self.indices)) & (self.indices[np.minimum(rows, len(self.indices) - 1)] == indices)
        if not ok.all():
            raise ValueError(f"indices {indices[~ok][:5].tolist()} are not in split {self.split!r}")
        return rows

    # -- state on disk ------------------------------------------------------------------------

    def _problem(self) -> str | None:
        """None when the entry is sound; 'missing'; or what is wrong with it."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return "missing"
        try:
            shape, dtype, fortran, offset = _npy_header(self.path)
        except Exception as e:  # truncated or overwritten header
            return f"unreadable .npy header ({type(e).__name__}: {e})"
        if shape != self.shape or dtype != np.uint8 or fortran:
            return f"header says {shape} {dtype}{' fortran-order' if fortran else ''}, expected {self.shape} uint8"
        if size != offset + self.nbytes:
            return f"{size} bytes, expected {offset + self.nbytes}"
        return None

    def filled(self) -> np.ndarray:
        """Which rows are decoded (a fresh bool array; all False when there is no sound bitmap)."""
        try:
            arr = np.load(self.filled_path, allow_pickle=False)
        except FileNotFoundError:
            return np.zeros(len(self), dtype=bool)
        except (OSError, ValueError, EOFError) as e:
            warnings.warn(f"decoded-image cache bitmap {self.filled_path} is unreadable ({e}); "
                          "its rows will be decoded again", RuntimeWarning, stacklevel=2)
            return np.zeros(len(self), dtype=bool)
        if arr.shape != (len(self),) or arr.dtype != np.bool_:
            warnings.warn(f"decoded-image cache bitmap {self.filled_path} holds {arr.shape} {arr.dtype}, expected "
                          f"({len(self)},) bool; its rows will be decoded again", RuntimeWarning, stacklevel=2)
            return np.zeros(len(self), dtype=bool)
        return arr

    def _write_filled(self, filled: np.ndarray) -> None:
        tmp = _temp_name(self.filled_path)
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(filled, dtype=bool))
            os.replace(tmp, self.filled_path)
        finally:
            tmp.unlink(missing_ok=True)

    def _check_disk_space(self, always: bool = False) -> None:
        needed = self.nbytes + len(self) + 4096  # rows, bitmap, headers
        free = shutil.disk_usage(self.cache_dir).free
        if free < needed or always:
            raise OSError(errno.ENOSPC,
                          f"not enough disk space for the decoded-image cache of {self.dataset_name} {self.split!r} "
                          f"at {self.image_size} px: it needs {needed} bytes ({needed / 1e9:.2f} GB) in {self.cache_dir}, "
                          f"which has {free} bytes ({free / 1e9:.2f} GB) free. Point the cache elsewhere with the "
                          f"`cache_dir` parameter (the config's cache_dir), or decode from disk every epoch with "
                          f"`image_cache=False` (image_split(cache=False)).")

    def _create_or_repair(self) -> None:
        """Under the lock: make sure a sound entry exists (a damaged one is deleted, with a warning)."""
        problem = self._problem()
        if problem is None:
            return
        if problem != "missing":
            warnings.warn(f"decoded-image cache {self.path} is damaged ({problem}); deleting it and decoding "
                          "its images again", RuntimeWarning, stacklevel=3)
            self.path.unlink(missing_ok=True)
        self.filled_path.unlink(missing_ok=True)  # the rows of a new file are all undecoded
        self._check_disk_space()
        tmp = _temp_name(self.path)
        try:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)
            arr.flush()
            del arr
            self._allocate(tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _allocate(self, path: Path) -> None:
        """Reserve the file's blocks now. A memory-mapped write into a sparse file on a full disk kills
        the process (SIGBUS) instead of raising, so the space the check found is claimed at once."""
        if not hasattr(os, "posix_fallocate"):
            return
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self._check_disk_space(always=True)
            # EOPNOTSUPP/EINVAL: a filesystem without it; the file stays sparse
        finally:
            os.close(fd)

    def lock(self) -> FileLock:
        return FileLock(str(self.lock_path), poll_interval=LOCK_POLL_S)

    # -- filling ------------------------------------------------------------------------------

    def ensure(self, rows=None, workers: int = 4, progress: bool = False) -> int:
        """Decode the rows (all by default) not yet in the cache. Returns how many this call decoded.

        Rows are decoded in chunks, each under the lock: re-read the bitmap, decode this process's
        missing rows, write them in place, flush, then mark them. Another process waiting on the
        lock finds them marked and does not decode them again. Chunks last about `HOLD_S` and the
        lock is let go for `YIELD_S` between them, so a long fill (`prepare_splits`) does not keep a
        process that needs other rows of the split waiting until it ends.
        """
        rows = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if not len(rows):
            return 0
        if self._problem() is None and self.filled()[rows].all():
            return 0  # every row is there: read without the lock
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        workers = max(1, int(workers or 1))
        chunk = max(1, int(CHUNK))
        decoded, bar = 0, None
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                while True:
                    with self.lock():
                        self._create_or_repair()
                        filled = self.filled()
                        missing = rows[~filled[rows]]
                        if bar is None and progress and len(missing):
                            from tqdm.auto import tqdm
                            bar = tqdm(total=len(missing), unit="img", desc=f"decode {self.dataset_name} {self.split}")
                        if not len(missing):
                            break
                        todo = missing[:chunk]
                        started = time.perf_counter()
                        self._decode_rows(todo, pool, bar)
                        filled[todo] = True
                        self._write_filled(filled)
                        decoded += len(todo)
                        per_image = (time.perf_counter() - started) / len(todo)
                    if len(missing) == len(todo):
                        break
                    chunk = int(min(max(HOLD_S / max(per_image, 1e-6), 2 * workers), 64 * CHUNK))
                    time.sleep(YIELD_S)  # a waiting process gets its turn here
        finally:
            if bar is not None:
                bar.close()
        return decoded

    def _decode_rows(self, rows: np.ndarray, pool: ThreadPoolExecutor, bar=None) -> None:
        # PIL releases the GIL while decoding and resizing, so threads scale on the cores there are.
        def one(r):
            return _load_uint8(None, self.indices[r], self.image_size, self.draft, path=self.paths[r])
        out = np.load(self.path, mmap_mode="r+")
        try:
            for r, arr in zip(rows, pool.map(one, rows)):
                out[r] = arr
                if bar is not None:
                    bar.update(1)
            out.flush()  # the rows reach the file before the bitmap says they are there
        finally:
            del out

    def open(self) -> np.memmap:
        """The whole array, read-only (rows not marked in `filled()` hold zeros or stale bytes)."""
        return np.load(self.path, mmap_mode="r")

    def disk_bytes(self) -> int:
        """Bytes the entry occupies on disk (allocated blocks)."""
        total = 0
        for p in (self.path, self.filled_path):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
        return total


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
                  draft: bool = DEFAULT_DRAFT, workers: int = 4, progress: bool = False) -> CachedImages:
    """The images of `indices` (any mix of splits), served from the per-split caches, decoding only
    those not decoded before (by this or any other process)."""
    indices = np.asarray(indices, dtype=np.int64)
    paths, part, rows = [], np.zeros(len(indices), dtype=np.int32), np.zeros(len(indices), dtype=np.int64)
    for split, pos, split_rows in _resolve(dataset, indices):
        cache = SplitCache(dataset, split, image_size, cache_dir, draft=draft)
        cache.ensure(split_rows, workers=workers, progress=progress)
        part[pos], rows[pos] = len(paths), split_rows
        paths.append(cache.path)
    return CachedImages(paths, part, rows, image_size)


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
        for k, arr in enumerate(pool.map(lambda i: _load_uint8(dataset, i, image_size, draft), indices)):
            out[k] = arr
    return out


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------

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
