"""What a run reads, by content: a fingerprint of a dataset folder and a digest of a weights file.

Run ids and the reuse check hold these, never a path's text: the same weights by another path are
the same run; other bytes at the same path, or other data under the same `root_dir`, another run.

`dataset_fingerprint`, cheap enough for every run: the sha256 of each top-level file (metadata.csv,
...), and for every file below (the images) its relative path, size and mtime in whole seconds (no
image byte read). A moved folder is the same data; the mtime catches an image replaced in place by
one of the same size. A copy that resets mtimes (`cp -r` without `-p`) is other data and recomputes
(use `cp -a`, `rsync -a`); for data edited with mtimes restored, `CLIPDG_CONTENT_FINGERPRINT=1`
(`content_fingerprint`) uses each image's sha256 instead, here and in the decode cache's key
(`image_digests`, memoised by (path, size, mtime_ns, ctime_ns, inode)). Inside
`one_scan_per_folder()` each folder is scanned once (a sweep's done checks; data is never written).

`file_digest`: a weights file's sha256, memoised in `digests.json` under the cache folder, keyed by
(real path, size, mtime_ns, ctime_ns, inode), so a large file is hashed once per change.
Imports only `paths`, so anything may import this module.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from pathlib import Path

from .paths import atomic_path

DIGEST_MEMO = "digests.json"
CONTENT_ENV = "CLIPDG_CONTENT_FINGERPRINT"  # an environment variable: every process touching the data must agree
MEMO_LIMIT = 2000  # entries kept in the memo (the most recent)
_READ = 1 << 20


_SCANS: contextvars.ContextVar[dict] = contextvars.ContextVar("dataset_scans")  # folder -> fingerprint


@contextlib.contextmanager
def one_scan_per_folder():
    """Within the block `dataset_fingerprint` scans each folder once (nested blocks share the outer's)."""
    token = _SCANS.set(_SCANS.get({}))
    try:
        yield
    finally:
        _SCANS.reset(token)


class CacheRebuiltWarning(RuntimeWarning):
    """A cache entry failed its check (damaged, or not what its checksum says) and was rebuilt.
    The message names the file. The sweep runner collects these from the points it runs."""


def identity_mismatch(holds, expected: dict) -> str | None:
    """None when a cache file's stated identity (`holds`, read from inside it) is `expected`;
    otherwise which fields differ, for the rebuild warning."""
    expected = json.loads(json.dumps(expected, sort_keys=True, default=str))
    if not isinstance(holds, dict):
        return "it does not say what it holds (written by an older version)"
    wrong = [f"{k}={holds.get(k)!r}, expected {v!r}" for k, v in expected.items() if holds.get(k) != v]
    return "it holds " + "; ".join(wrong) if wrong else None


def content_fingerprint() -> bool:
    """Whether image identities read the images' bytes (`CLIPDG_CONTENT_FINGERPRINT=1`; off by default)."""
    value = os.environ.get(CONTENT_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{CONTENT_ENV}={value!r}: 1 fingerprints the images' bytes, 0 (the default) their names, sizes and mtimes")
    return value == "1"


def sha256_of_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def _memo_key(path: str, st: os.stat_result) -> str:
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _read_memo(memo: Path) -> dict:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: Path, data: dict) -> None:
    """Atomically (temporary name, rename); a lost race with another writer only costs a re-hash."""
    if not memo.parent.is_dir():  # never create a cache folder just to remember a digest
        return
    with contextlib.suppress(OSError), atomic_path(memo) as tmp:  # read-only or full: hash again next time
        tmp.write_text(json.dumps(data), encoding="utf-8")


def file_digests(paths, memo_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{path as given: sha256 hex} of existing files, memoised under `memo_dir` (None: no memo)."""
    memo = Path(memo_dir) / DIGEST_MEMO if memo_dir is not None else None
    known = _read_memo(memo) if memo is not None else {}
    out, changed = {}, False
    for p in paths:
        real = os.path.realpath(p)
        key = _memo_key(real, os.stat(real))
        digest = known.get(key)
        if digest is None:
            digest = sha256_of_file(real)
            after = os.stat(real)
            if _memo_key(real, after) == key:  # not changed while we read it
                known.pop(key, None)
                known[key] = digest
                changed = True
        out[str(p)] = digest
    if changed and memo is not None:
        _write_memo(memo, dict(list(known.items())[-MEMO_LIMIT:]))
    return out


def file_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """sha256 hex of a file's bytes, memoised by (real path, size, mtime, ctime, inode) under `memo_dir`."""
    return file_digests([path], memo_dir)[str(path)]


_IMAGE_DIGESTS: dict[str, dict] = {}  # real data folder -> {name: [size, mtime_ns, ctime_ns, inode, sha256]}
_MEMO_FILES: set[Path] = set()  # image memo files this process has read


def image_digests(folder: str | os.PathLike, entries, memo_dir: str | os.PathLike | None = None) -> list[str]:
    """sha256 of each file of `entries` ((name relative to `folder`, its os.stat_result)), memoised
    by (size, mtime_ns, ctime_ns, inode) in this process and in `<memo_dir>/images-<folder>.json` (read
    at the first file this process does not know): a second check reads no image byte. ctime is in
    the key because no tool can set it back."""
    folder = os.path.realpath(folder)
    known = _IMAGE_DIGESTS.setdefault(folder, {})
    memo = None if memo_dir is None else Path(memo_dir) / f"images-{hashlib.sha256(folder.encode()).hexdigest()[:16]}.json"
    out, write = [], False
    for name, st in entries:
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = known.get(name)
        if (entry is None or entry[:4] != sig) and memo is not None and memo not in _MEMO_FILES:
            _MEMO_FILES.add(memo)
            on_disk = _read_memo(memo)
            write = not on_disk
            for other, found in on_disk.items():
                known.setdefault(other, found)
            entry = known.get(name)
        if entry is None or entry[:4] != sig:
            path, write = os.path.join(folder, name), True
            entry = sig + [sha256_of_file(path)]
            after = os.stat(path)
            if [after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino] == sig:  # not changed while read
                known[name] = entry
        out.append(entry[4])
    if write and memo is not None:
        _write_memo(memo, known)
    return out


def _listing(folder: str) -> list[tuple[str, os.stat_result]]:
    """(path relative to `folder`, its stat) of every file below `folder`'s subfolders (dotfiles
    skipped), sorted. One stat per file, no file is opened."""
    out = []
    stack = [(folder, "")]
    while stack:
        here, rel = stack.pop()
        with os.scandir(here) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=True):
                    stack.append((entry.path, name + "/"))
                elif rel:  # top-level files are digested whole (metadata)
                    out.append((name, entry.stat(follow_symlinks=True)))
    out.sort(key=lambda item: item[0])
    return out


def dataset_fingerprint(folder: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> dict:
    """The content of a dataset folder (e.g. `<root_dir>/fmow_v1.1`), see the module's docstring:
    {'metadata': {name: sha256}, 'images': {'files', 'bytes', 'listing'[, 'content']}, 'digest'};
    `digest` covers the rest and is what a run id holds. {'missing': True} when the folder is not there.
    With `content_fingerprint()` on, each image's sha256 stands where its mtime stood ('content': True)."""
    folder, scans = os.fspath(folder), _SCANS.get({})
    if not os.path.isdir(folder):
        return {"missing": True}
    if os.path.realpath(folder) in scans:
        return scans[os.path.realpath(folder)]
    top = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    digests = file_digests([os.path.join(folder, n) for n in top], memo_dir)
    metadata = {n: digests[os.path.join(folder, n)] for n in top}
    listing, content = _listing(folder), content_fingerprint()
    stamps = image_digests(folder, listing, memo_dir) if content else [st.st_mtime_ns // 1_000_000_000 for _, st in listing]
    h = hashlib.sha256()
    for (name, st), stamp in zip(listing, stamps):
        h.update(f"{name}\t{st.st_size}\t{stamp}\n".encode())
    images = {"files": len(listing), "bytes": sum(st.st_size for _, st in listing), "listing": h.hexdigest(),
              **({"content": True} if content else {})}
    digest = hashlib.sha256(json.dumps([metadata, images], sort_keys=True).encode()).hexdigest()
    scans[os.path.realpath(folder)] = {"metadata": metadata, "images": images, "digest": digest}
    return scans[os.path.realpath(folder)]
