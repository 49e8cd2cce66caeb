"""The decode cache: each image decoded once, into a per-split uint8 memmap shared by every subset.

Per *split*, not per subset, because the grid (fractions x seeds) draws many overlapping subsets of
one split; a subset is an index into it (`CachedImages`). It fills lazily, rows in split order, each
in open_clip's eval geometry (docs/scale.md). One entry per (dataset, split, size, draft mode, key):

    <dataset>-<split>-<size>px-<full|draft>-<key>.npy       the rows (memory-mapped, blocks reserved up front)
    <dataset>-<split>-<size>px-<full|draft>-<key>.meta.npz  identity (JSON), filled (bitmap), sums (checksums)
    <dataset>-<split>-<size>px-<full|draft>-<key>.lock      a `filelock.FileLock`

The identity is checked on every open; a row's checksum (`row_sums`, near memory speed:
benchmarks/bench_cache_check.py) the first time a process asks for it. A copied entry or damaged row
is decoded again with a `CacheRebuiltWarning` naming the file (accidents, not deliberate edits).
Writers hold the lock, write and flush rows, and only then mark them (the meta file is replaced
atomically): a crash leaves rows unmarked, never marked but unwritten. A reader of marked rows takes no lock."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..data.splits import split_indices, subset_rows
from ..fingerprint import CacheRebuiltWarning, content_fingerprint, identity_mismatch, image_digests
from ..paths import atomic_path
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, DRAFT_FACTOR, PREPROCESS, ImageDecodeError, image_names, load_uint8

CHUNK = 256  # rows decoded (and marked) in the first hold of the lock; later holds aim at HOLD_S
HOLD_S = 2.0  # seconds a decoder holds the lock at a time, so others needing other rows get turns
YIELD_S = 0.03  # pause between holds; waiting processes poll the lock every LOCK_POLL_S
LOCK_POLL_S = 0.01
CHECKSUM = "rowsum64-4k-blocks:v1"  # part of the key: entries of another checksum are other entries
VERIFY_ROWS = 64  # rows hashed at a time (by one thread) while verifying

# -- checksums --------------------------------------------------------------------------------

_BLOCK = 512  # 64-bit words in a block: 4 KiB, a page
_WEIGHTS = 2 * np.arange(1 << 16, dtype=np.uint64) + np.uint64(1)  # odd, so no block's change can vanish


def row_sums(rows: np.ndarray) -> np.ndarray:
    """uint64 checksum of each row of a [k, ...] uint8 array: sum over its 4 KiB blocks of
    (block index * 2 + 1) x (the block's sum of 64-bit words), modulo 2**64."""
    k = len(rows)
    flat = np.ascontiguousarray(rows).reshape(k, -1)
    n = flat.shape[1]
    words = n // 8
    nb = words // _BLOCK
    w = flat[:, :words * 8].view(np.uint64)
    parts = np.empty((k, nb + 2), dtype=np.uint64)
    parts[:, :nb] = w[:, :nb * _BLOCK].reshape(k, nb, _BLOCK).sum(axis=-1, dtype=np.uint64)
    parts[:, nb] = w[:, nb * _BLOCK:].sum(axis=-1, dtype=np.uint64)
    tail = np.zeros((k, 8), dtype=np.uint8)
    tail[:, :n - words * 8] = flat[:, words * 8:]
    parts[:, nb + 1] = tail.view(np.uint64)[:, 0]
    return (parts * _WEIGHTS[:nb + 2]).sum(axis=-1, dtype=np.uint64)


# path -> (the file's (dev, inode, size, mtime_ns) when verified, bool [N_split]: rows verified)
_VERIFIED: dict[str, tuple[tuple, np.ndarray]] = {}


def _signature(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def forget_verified() -> None:
    """Forget which rows this process verified (as a new process would)."""
    _VERIFIED.clear()


class SplitCache:
    """The decoded images of one split of one dataset at one size and decode mode, on disk.

    The key (in the file name) covers: dataset name and version, the split and its member indices,
    the image size, `PREPROCESS`, the draft mode, `CHECKSUM`, and every image file of the split: name
    relative to the data folder, size and mtime (stat'ed when the object is made; with
    `fingerprint.content_fingerprint()` on, its sha256 in place of the mtime). A replaced or touched
    image gives a new entry; a moved data folder (`mv` keeps mtimes) shares it. `key` is also the
    identity of the decoded images that frozen features are keyed by. `draft`: see `decode.DEFAULT_DRAFT`
    (JPEGs only, drafted to a shorter side >= `DRAFT_FACTOR` x `image_size`).
    """

    def __init__(self, dataset, split: str, image_size: int, cache_dir=DEFAULT_CACHE, *, draft: bool = DEFAULT_DRAFT):
        self.dataset_name, self.split = dataset.dataset_name, split
        self.image_size, self.draft = int(image_size), bool(draft)
        self.indices = split_indices(dataset, split)
        names = image_names(dataset, self.indices)
        data_dir = Path(dataset.data_dir).resolve()
        self.paths = [os.path.join(data_dir, n) for n in names]
        self.shape = (len(self.indices), self.image_size, self.image_size, 3)
        self.cache_dir = Path(cache_dir)
        self.key = self._key(dataset, names, data_dir)
        stem = f"{self.dataset_name}-{split}-{self.image_size}px-{'draft' if self.draft else 'full'}-{self.key}"
        self.path = self.cache_dir / f"{stem}.npy"
        self.meta_path = self.cache_dir / f"{stem}.meta.npz"
        self.lock_path = self.cache_dir / f"{stem}.lock"
        # what the rows are, stated inside the meta file and checked on every open
        self.identity = {"dataset": self.dataset_name, "version": str(getattr(dataset, "version", "")), "split": split,
                         "rows": len(self.indices), "image_size": self.image_size, "draft": self.draft,
                         "preprocess": PREPROCESS, "checksum": CHECKSUM, "key": self.key}

    def _key(self, dataset, names: list[str], data_dir: Path) -> str:
        stats = []
        for k, path in enumerate(self.paths):
            try:
                stats.append(os.stat(path))
            except OSError as e:
                raise ImageDecodeError(f"image {path} (dataset index {int(self.indices[k])}) of split {self.split!r} "
                                       f"cannot be read: {e}", path=path, index=int(self.indices[k])) from e
        sizes = np.array([st.st_size for st in stats], dtype=np.int64)
        if content_fingerprint():  # the images' bytes (memoised beside the entries), not their mtimes
            stamps = "\n".join(image_digests(data_dir, zip(names, stats), self.cache_dir)).encode()
        else:
            stamps = np.array([st.st_mtime_ns for st in stats], dtype=np.int64).tobytes()
        head = json.dumps([self.dataset_name, str(getattr(dataset, "version", "")), self.split,
                           self.image_size, PREPROCESS, self.draft, DRAFT_FACTOR if self.draft else None, CHECKSUM])
        digest = hashlib.sha256(head.encode())
        for part in (self.indices.astype(np.int64).tobytes(), "\n".join(names).encode(), sizes.tobytes(), stamps):
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
        return subset_rows(self.indices, indices, f"split {self.split!r}")

    # -- state on disk ------------------------------------------------------------------------

    def _state(self) -> tuple[str | None, dict | None]:
        """(None, the meta file's contents) when the entry is sound, else (what is wrong, None)."""
        try:
            size, arr = self.path.stat().st_size, np.load(self.path, mmap_mode="r")  # reads the header only
        except FileNotFoundError:
            return "missing", None
        except Exception as e:  # truncated, or an overwritten header
            return f"unreadable .npy file ({type(e).__name__}: {e})", None
        if (arr.shape, arr.dtype, arr.flags.c_contiguous, size) != (self.shape, np.uint8, True, arr.offset + self.nbytes):
            return (f"it holds {arr.shape} {arr.dtype} in {size} bytes, expected {self.shape} uint8 in "
                    f"{arr.offset + self.nbytes}"), None
        meta = self._meta()
        if isinstance(meta, str):
            return meta, None
        wrong = identity_mismatch(meta["identity"], self.identity)
        return (wrong, None) if wrong else (None, meta)

    def _meta(self) -> dict | str:
        """{'identity', 'filled', 'sums'} from the meta file, or what is wrong with it."""
        try:
            with np.load(self.meta_path, allow_pickle=False) as z:
                meta = {"identity": json.loads(str(z["identity"])), "filled": z["filled"], "sums": z["sums"]}
        except FileNotFoundError:
            return f"its meta file {self.meta_path.name} (what it holds, which rows are decoded) is missing: damaged, or made by an older version"
        except Exception as e:  # truncated, not a zip, a member missing
            return f"its meta file {self.meta_path.name} is unreadable ({type(e).__name__}: {e})"
        n = (len(self),)
        if (meta["filled"].shape, meta["sums"].shape, meta["filled"].dtype, meta["sums"].dtype) != (n, n, bool, np.uint64):
            return f"its meta file {self.meta_path.name} does not describe {len(self)} rows"
        return meta

    def marks(self) -> tuple[np.ndarray, np.ndarray]:
        """Which rows are decoded (bool) and their checksums (uint64), from one read of the meta file:
        fresh arrays, all False / 0 when the meta file is not sound."""
        meta = self._meta()
        if isinstance(meta, str):
            return np.zeros(len(self), dtype=bool), np.zeros(len(self), dtype=np.uint64)
        return meta["filled"], meta["sums"]

    def _write_meta(self, filled: np.ndarray, sums: np.ndarray) -> None:
        with atomic_path(self.meta_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, identity=np.array(json.dumps(self.identity, sort_keys=True)),
                     filled=np.ascontiguousarray(filled, dtype=bool), sums=np.ascontiguousarray(sums, dtype=np.uint64))

    def _check_disk_space(self, always: bool = False) -> None:
        needed, free = self.nbytes + len(self) + 4096, shutil.disk_usage(self.cache_dir).free  # rows, bitmap, headers
        if free < needed or always:
            raise OSError(errno.ENOSPC,
                          f"not enough disk space for the decoded-image cache of {self.dataset_name} {self.split!r} "
                          f"at {self.image_size} px: it needs {needed} bytes ({needed / 1e9:.2f} GB) in {self.cache_dir}, "
                          f"which has {free} bytes ({free / 1e9:.2f} GB) free. Point the cache elsewhere with the "
                          f"`cache_dir` parameter (the config's cache_dir), or decode from disk every epoch with "
                          f"`image_cache=False` (image_split(cache=False)).")

    def _create_or_repair(self) -> None:
        """Under the lock: make sure a sound entry exists (a damaged one is deleted, with a warning)."""
        problem, _ = self._state()
        if problem is None:
            return
        if problem != "missing":
            warnings.warn(f"decoded-image cache {self.path} is damaged or not what its name says ({problem}); "
                          "deleting it and decoding its images again", CacheRebuiltWarning, stacklevel=3)
            self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        self._check_disk_space()
        with atomic_path(self.path) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape).flush()
            # Reserve the blocks now: a memory-mapped write into a sparse file on a full disk kills the
            # process (SIGBUS) instead of raising. Without fallocate (or EOPNOTSUPP) the file stays sparse.
            fd = os.open(tmp, os.O_RDWR)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    self._check_disk_space(always=True)
            finally:
                os.close(fd)
            self._write_meta(np.zeros(len(self), dtype=bool), np.zeros(len(self), dtype=np.uint64))  # all undecoded

    def lock(self) -> FileLock:
        return FileLock(str(self.lock_path), poll_interval=LOCK_POLL_S)

    # -- filling ------------------------------------------------------------------------------

    def ensure(self, rows=None, workers: int = 4, progress: bool = False) -> int:
        """Decode the rows (all by default) not yet in the cache; returns how many this call decoded.
        In chunks under the lock (re-read the bitmap, decode, write, flush, mark) of about `HOLD_S`, the
        lock let go for `YIELD_S` between them: a long fill does not starve a process needing other rows."""
        rows = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if not len(rows):
            return 0
        problem, meta = self._state()
        if problem is None and meta["filled"][rows].all():
            return 0  # every row is there: read without the lock
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        workers = max(1, int(workers or 1))
        chunk, decoded, bar = CHUNK, 0, None
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                while True:
                    with self.lock():
                        self._create_or_repair()
                        filled, sums = self.marks()
                        missing = rows[~filled[rows]]
                        if bar is None and progress and len(missing):
                            from tqdm.auto import tqdm
                            bar = tqdm(total=len(missing), unit="img", desc=f"decode {self.dataset_name} {self.split}")
                        if not len(missing):
                            break
                        todo = missing[:chunk]
                        started = time.perf_counter()
                        before = self._verified()
                        sums[todo], filled[todo] = self._decode_rows(todo, pool, bar), True
                        self._write_meta(filled, sums)  # checksums and the marks, in one file
                        before[todo] = True  # decoded from the files just now: nothing to verify
                        _VERIFIED[str(self.path)] = (_signature(self.path), before)
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

    def _decode_rows(self, rows: np.ndarray, pool: ThreadPoolExecutor, bar=None) -> np.ndarray:
        """Decode the rows into the file; returns their checksums, taken from the decoded pixels."""
        # PIL releases the GIL while decoding and resizing, so threads scale on the cores there are.
        def one(r):
            return load_uint8(None, self.indices[r], self.image_size, self.draft, path=self.paths[r])
        sums = np.empty(len(rows), dtype=np.uint64)
        out = np.load(self.path, mmap_mode="r+")
        try:
            for k, (r, arr) in enumerate(zip(rows, pool.map(one, rows))):
                out[r] = arr
                sums[k] = row_sums(arr[None])[0]
                if bar is not None:
                    bar.update(1)
            out.flush()  # the rows reach the file before the bitmap says they are there
        finally:
            del out
        return sums

    # -- verifying ----------------------------------------------------------------------------

    def _verified(self) -> np.ndarray:
        """Rows this process verified (a fresh copy), valid while the file is the one it verified."""
        known = _VERIFIED.get(str(self.path))
        try:
            same = known is not None and known[0] == _signature(self.path)
        except FileNotFoundError:
            same = False
        return known[1].copy() if same else np.zeros(len(self), dtype=bool)

    def verify(self, rows=None, workers: int = 4, array: np.ndarray | None = None) -> int:
        """Check decoded rows (all marked ones by default) against their checksums, each once per process
        while the file is unchanged; failing rows are decoded again, with a `CacheRebuiltWarning` naming
        the file. Returns how many. `array`: the map the caller will read (`CachedImages`), so the pages
        checked are already mapped when read (about half the check's cost)."""
        filled, sums = self.marks()
        rows = np.flatnonzero(filled) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        signature = _signature(self.path)
        verified = self._verified()
        todo = rows[~verified[rows] & filled[rows]]
        if not len(todo):
            return 0
        arr, bad = (self.open() if array is None else array), []

        def check(part: np.ndarray, arr=arr) -> np.ndarray:  # numpy's reductions let go of the GIL: threads help
            block = arr[part[0]:part[-1] + 1] if part[-1] - part[0] == len(part) - 1 else arr[part]
            return row_sums(block) == sums[part]

        parts = [todo[i:i + VERIFY_ROWS] for i in range(0, len(todo), VERIFY_ROWS)]
        try:
            with ThreadPoolExecutor(max_workers=max(1, int(workers or 1))) as pool:
                for part, ok in zip(parts, pool.map(check, parts)):
                    verified[part[ok]] = True
                    bad.extend(part[~ok].tolist())
        finally:
            del arr
        _VERIFIED[str(self.path)] = (signature, verified)
        if not bad:
            return 0
        shown = ", ".join(str(int(self.indices[r])) for r in bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.warn(f"decoded-image cache {self.path}: {len(bad)} row(s) do not match their checksums (dataset "
                      f"indices {shown}); decoding them again", CacheRebuiltWarning, stacklevel=2)
        with self.lock():
            filled, sums = self.marks()
            filled[bad] = False
            self._write_meta(filled, sums)
        self.ensure(bad, workers=workers)
        return len(bad)

    def open(self) -> np.memmap:
        """The whole array, read-only (rows not marked in `marks()` hold zeros or stale bytes)."""
        return np.load(self.path, mmap_mode="r")
