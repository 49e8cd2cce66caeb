"""The per-split decoded cache: one decode per image, shared by subsets and processes, checked on open."""
from __future__ import annotations

import collections
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdg_nb.images import decode as image_decode
from clipdg_nb.data import fraction_indices, load_dataset, split_indices
from clipdg_nb.images import (CachedImages, ImageDecodeError, PILImages, SplitCache, decode_split, image_path,
                              image_split, prepare_splits, resize_crop)

ROOT = Path(__file__).resolve().parents[1]


def direct(dataset, indices, size):
    """What WILDS's get_input gives, in open_clip's eval geometry: the reference pixels."""
    geometry = resize_crop(size)
    return np.stack([np.array(geometry(dataset.get_input(int(i)).convert("RGB"))) for i in indices])


@pytest.fixture
def decodes(monkeypatch):
    """Counts the files actually decoded (by path)."""
    seen = collections.Counter()
    lock = threading.Lock()
    real = image_decode._decode_image

    def spy(path, image_size, draft=False):
        with lock:
            seen[path] += 1
        return real(path, image_size, draft)

    monkeypatch.setattr(image_decode, "_decode_image", spy)
    return seen


def copy_dataset(src_root: Path, name: str, dst_root: Path):
    folder = {"fmow": "fmow_v1.1", "iwildcam": "iwildcam_v2.0"}[name]
    shutil.copytree(src_root / folder, dst_root / folder)
    return load_dataset(name, dst_root)


def no_tmp(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.rglob("*"))


@pytest.mark.parametrize("name", ["fmow", "iwildcam"])
def test_subset_from_split_cache_equals_direct_decode(name, request, tmp_path):
    ds = request.getfixturevalue(name)
    idx = fraction_indices(ds, 0.1, seed=0)
    arr = decode_split(ds, idx, 24, cache_dir=tmp_path)
    assert isinstance(arr, CachedImages) and arr.shape == (len(idx), 24, 24, 3)
    assert np.array_equal(np.asarray(arr), direct(ds, idx, 24))
    # one entry for the whole train split, filled only where asked
    cache = SplitCache(ds, "train", 24, tmp_path)
    assert cache.path.exists() and cache.marks()[0].sum() == len(idx) and len(cache) == len(split_indices(ds, "train"))
    assert np.array_equal(cache.open()[cache.rows_of(idx)], np.asarray(arr))
    # the path helper names the file get_input reads
    assert image_path(ds, int(idx[0])).exists()


def test_small_jpegs_are_the_same_with_draft(iwildcam, tmp_path):
    idx = split_indices(iwildcam, "id_val")[:10]
    full = decode_split(iwildcam, idx, 24, cache_dir=tmp_path, draft=False)
    drafted = decode_split(iwildcam, idx, 24, cache_dir=tmp_path, draft=True)
    # 32 px files are below 2 x 24 px: draft cannot shrink them; but the mode is part of the key
    assert np.array_equal(np.asarray(full), np.asarray(drafted))
    assert len(list(tmp_path.glob("iwildcam-id_val-24px-full-*.meta.npz"))) == 1
    assert len(list(tmp_path.glob("iwildcam-id_val-24px-draft-*.meta.npz"))) == 1


def test_draft_on_a_large_jpeg_is_close_and_keeps_the_geometry(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (27, 48, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((1920, 1080), Image.BICUBIC)
    path = tmp_path / "big.jpg"
    img.save(path, quality=90)
    full = image_decode._decode_image(str(path), 224, draft=False)
    drafted = image_decode._decode_image(str(path), 224, draft=True)
    assert full.shape == drafted.shape == (224, 224, 3)
    assert np.array_equal(full, np.array(resize_crop(224)(Image.open(path).convert("RGB"))))
    diff = np.abs(full.astype(int) - drafted.astype(int))
    assert 0 < diff.mean() < 2.0


def test_a_second_subset_decodes_only_its_missing_images(fmow, tmp_path, decodes):
    a = fraction_indices(fmow, 0.1, seed=0)
    b = fraction_indices(fmow, 0.1, seed=1)
    decode_split(fmow, a, 16, cache_dir=tmp_path)
    assert sum(decodes.values()) == len(a)
    decodes.clear()
    arr_b = decode_split(fmow, b, 16, cache_dir=tmp_path)
    assert sum(decodes.values()) == len(np.setdiff1d(b, a)) > 0
    assert max(decodes.values()) == 1
    decodes.clear()
    again = decode_split(fmow, np.union1d(a, b), 16, cache_dir=tmp_path)
    assert sum(decodes.values()) == 0  # every row is there
    assert np.array_equal(np.asarray(arr_b), direct(fmow, b, 16))
    assert np.array_equal(np.asarray(again), direct(fmow, np.union1d(a, b), 16))
    # the old per-subset files are gone: one entry (rows + meta + lock) for the split
    assert len(list(tmp_path.glob("*.np[yz]"))) == 2 and no_tmp(tmp_path)


def test_request_spanning_several_splits(fmow, tmp_path, decodes):
    idx = np.concatenate([split_indices(fmow, "id_val")[:4], split_indices(fmow, "train")[:3]])
    with pytest.raises(ValueError, match=r"indices must lie in one split of fmow; these lie in \['train', 'id_val'\]"):
        decode_split(fmow, idx, 16, cache_dir=tmp_path)
    assert sum(decodes.values()) == 0
    idx = idx[:4][np.random.default_rng(0).permutation(4)]  # any order within a split
    arr = decode_split(fmow, idx, 16, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(arr), direct(fmow, idx, 16))
    assert np.array_equal(arr[1:3], direct(fmow, idx[1:3], 16)) and np.array_equal(arr[3], direct(fmow, idx[3:4], 16)[0])


def test_image_split_items_and_pickling(iwildcam, tmp_path):
    idx = fraction_indices(iwildcam, 0.05, seed=2)
    cached = image_split(iwildcam, idx, 16, cache_dir=tmp_path)
    pil = image_split(iwildcam, idx, 16, cache=False)
    assert isinstance(pil, PILImages)
    for k in (0, len(idx) - 1):
        assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(cached[k], pil[k]))
    blob = pickle.dumps(cached.images)
    assert len(blob) < 10_000  # by path, not by pixels
    assert np.array_equal(np.asarray(pickle.loads(blob)), np.asarray(cached.images))


def test_prepare_splits_fills_whole_splits(fmow, tmp_path, decodes):
    out = prepare_splits(fmow, ["id_val", "val"], 16, tmp_path, workers=2, progress=False)
    assert {s: v["decoded"] for s, v in out.items()} == {"id_val": 62, "val": 62}
    assert sum(decodes.values()) == 124
    decodes.clear()
    again = prepare_splits(fmow, ["id_val"], 16, tmp_path, workers=2, progress=False)
    sub = decode_split(fmow, split_indices(fmow, "val")[::3], 16, cache_dir=tmp_path)
    assert again["id_val"]["decoded"] == 0 and sum(decodes.values()) == 0
    assert np.array_equal(np.asarray(sub), direct(fmow, split_indices(fmow, "val")[::3], 16))


CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from clipdg_nb.images import cache as image_cache, decode as image_decode, views as image_views
    from clipdg_nb.data import load_dataset, split_indices
    root, cache, log, go, out, lo, hi = sys.argv[1:8]
    image_cache.CHUNK, image_cache.HOLD_S = 8, 0.005  # many short holds of the lock, so the two processes interleave
    real = image_decode._decode_image
    def logged(path, size, draft=False):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {path}\\n")
        return real(path, size, draft)
    image_decode._decode_image = logged
    ds = load_dataset("iwildcam", root)
    idx = split_indices(ds, "train")[int(lo):int(hi)]
    open(out + ".ready", "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    arr = image_views.decode_split(ds, idx, 24, cache_dir=cache, workers=2)
    np.save(out, np.asarray(arr))
""")


def test_two_processes_fill_one_cache_each_image_decoded_once(iwildcam, synth_root, tmp_path):
    script, log, go, cache = tmp_path / "child.py", tmp_path / "decoded.log", tmp_path / "go", tmp_path / "cache"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    ranges = {"a": (0, 200), "b": (100, 300)}
    procs = {k: subprocess.Popen([sys.executable, str(script), str(synth_root), str(cache), str(log), str(go),
                                  str(tmp_path / f"{k}.npy"), str(lo), str(hi)], env=env, cwd=str(tmp_path))
             for k, (lo, hi) in ranges.items()}
    deadline = time.time() + 120
    while not all((tmp_path / f"{k}.npy.ready").exists() for k in ranges):
        assert time.time() < deadline and all(p.poll() is None for p in procs.values()), "a child failed to start"
        time.sleep(0.05)
    go.touch()  # both start decoding together
    assert all(p.wait(timeout=120) == 0 for p in procs.values())
    train = split_indices(iwildcam, "train")
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.array_equal(a, direct(iwildcam, train[0:200], 24))
    assert np.array_equal(b, direct(iwildcam, train[100:300], 24))
    assert np.array_equal(a[100:], b[:100])
    lines = log.read_text().split("\n")[:-1]
    paths = [line.split(" ", 1)[1] for line in lines]
    by_pid = collections.Counter(line.split(" ", 1)[0] for line in lines)
    assert len(by_pid) == 2
    assert len(paths) == len(set(paths)) == 300  # the union, each image once in total
    assert no_tmp(cache)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_damaged_cache_entry_is_detected_warned_and_rebuilt(fmow, tmp_path, decodes, damage):
    idx = split_indices(fmow, "id_val")[:20]
    decode_split(fmow, idx, 16, cache_dir=tmp_path)
    cache = SplitCache(fmow, "id_val", 16, tmp_path)
    if damage == "truncate":
        with open(cache.path, "r+b") as fh:
            fh.truncate(cache.path.stat().st_size // 2)
    else:
        with open(cache.path, "r+b") as fh:
            fh.write(b"\x00" * 16)
    decodes.clear()
    with pytest.warns(RuntimeWarning, match=cache.path.name):
        arr = decode_split(fmow, idx, 16, cache_dir=tmp_path)
    assert sum(decodes.values()) == len(idx)  # decoded again
    assert np.array_equal(np.asarray(arr), direct(fmow, idx, 16))
    assert cache._state()[0] is None and cache.marks()[0].sum() == len(idx) and no_tmp(tmp_path)


def test_changed_image_file_changes_the_key(synth_root, tmp_path):
    ds = copy_dataset(synth_root, "fmow", tmp_path / "data")
    idx = split_indices(ds, "id_val")[:4]
    before = SplitCache(ds, "id_val", 16, tmp_path / "cache")
    old = decode_split(ds, idx, 16, cache_dir=tmp_path / "cache")
    path = image_path(ds, int(idx[1]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched: new mtime
    touched = SplitCache(ds, "id_val", 16, tmp_path / "cache")
    assert touched.key != before.key
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(path)  # new content, new size
    changed = SplitCache(ds, "id_val", 16, tmp_path / "cache")
    assert changed.key not in (before.key, touched.key)
    new = decode_split(ds, idx, 16, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.asarray(new)[[0, 2, 3]], np.asarray(old)[[0, 2, 3]])
    assert (np.asarray(new)[1] == 200).all() and not np.array_equal(np.asarray(new)[1], np.asarray(old)[1])
    # the untouched original (same names, sizes, mtimes: copytree keeps them) is the first entry's
    # content, wherever it lives: the folder's path is not part of the key
    original = load_dataset("fmow", synth_root)
    assert SplitCache(original, "id_val", 16, tmp_path / "cache").key == before.key


def test_truncated_image_raises_naming_path_and_index(synth_root, tmp_path):
    ds = copy_dataset(synth_root, "iwildcam", tmp_path / "data")
    idx = split_indices(ds, "val")[:12]
    bad = int(idx[7])
    path = image_path(ds, bad)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    cache_dir = tmp_path / "cache"
    with pytest.raises(ImageDecodeError) as err:
        decode_split(ds, idx, 16, cache_dir=cache_dir)
    msg = str(err.value)
    assert str(path) in msg and f"dataset index {bad}" in msg and err.value.index == bad
    assert no_tmp(cache_dir)
    cache = SplitCache(ds, "val", 16, cache_dir)
    assert not cache.marks()[0][cache.rows_of([bad])].any()  # never marked as decoded
    with pytest.raises(ImageDecodeError, match=f"dataset index {bad}"):
        decode_split(ds, idx, 16, cache_dir=None)
    with pytest.raises(ImageDecodeError, match=f"dataset index {bad}"):
        PILImages(ds, idx, 16)[7]


def test_disk_space_is_checked_before_creating_an_entry(fmow, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1234, 1234))
    cache = SplitCache(fmow, "train", 64, tmp_path)
    with pytest.raises(OSError) as err:
        decode_split(fmow, split_indices(fmow, "train")[:3], 64, cache_dir=tmp_path)
    msg = str(err.value)
    needed = cache.nbytes + len(cache) + 4096
    assert str(needed) in msg and "1234" in msg and "cache_dir" in msg and "image_cache=False" in msg
    assert not list(tmp_path.glob("*.npy")) and no_tmp(tmp_path)


def test_real_profile_writes_real_sizes_and_keeps_the_default_marker(tmp_path):
    import json

    from clipdg_nb.data import DATASETS
    from clipdg_nb.demo import render
    from clipdg_nb.demo.synthetic import SynthConfig, real_profile_config, synthetic_is_current, write_synthetic
    cfg = real_profile_config(12, n_eval=2)
    assert cfg.profile == "real" and cfg.iwildcam_sizes["train"] == 182 and cfg.fmow_sizes["val"] == 2
    write_synthetic(tmp_path, datasets=["fmow"], cfg=cfg)
    ds = load_dataset("fmow", tmp_path)
    img = Image.open(image_path(ds, 0))
    assert img.format == "PNG" and img.size == (224, 224)
    assert synthetic_is_current(tmp_path, "fmow", cfg) and not synthetic_is_current(tmp_path, "fmow", SynthConfig())
    # iWildCam's files: 1920x1080 JPEGs (the writer's save step; a whole copy needs >= 182 of them)
    size = DATASETS["iwildcam"].real_size
    grain = render.Grain(0, "iwildcam", size)
    render.save_image(np.zeros((64, 64, 3), np.uint8), tmp_path / "x.jpg", cfg, "iwildcam", 0, grain, size)
    jpg = Image.open(tmp_path / "x.jpg")
    assert jpg.format == "JPEG" and jpg.size == (1920, 1080)
    # the default profile's marker is unchanged (no 'profile' field), so existing copies stay current
    write_synthetic(tmp_path / "small", datasets=["fmow"],
                    cfg=SynthConfig(fmow_sizes={"train": 62, "id_val": 2, "id_test": 2, "val": 2, "test": 2}))
    assert "profile" not in json.loads((tmp_path / "small" / "fmow_v1.1" / "SYNTHETIC.json").read_text())
    with pytest.raises(ValueError, match="profile"):
        SynthConfig(profile="huge").validate()


def test_a_full_disk_while_reserving_the_file_leaves_nothing(fmow, tmp_path, monkeypatch):
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here")

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="image_cache=False"):
        decode_split(fmow, split_indices(fmow, "val")[:3], 16, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.npy")) and no_tmp(tmp_path)


def test_an_entry_copied_under_another_splits_name_is_rebuilt(fmow, tmp_path):
    """Issue 26 (3): id_test and test have the same number of rows, so the test entry's files copied
    over id_test's have the right shape; the meta file says whose rows they are, and is checked."""
    from clipdg_nb.images.cache import forget_verified
    ids, other = split_indices(fmow, "id_test"), split_indices(fmow, "test")
    assert len(ids) == len(other)
    decode_split(fmow, ids, 16, cache_dir=tmp_path)
    decode_split(fmow, other, 16, cache_dir=tmp_path)
    target, source = SplitCache(fmow, "id_test", 16, tmp_path), SplitCache(fmow, "test", 16, tmp_path)
    for src in tmp_path.glob(source.path.name[:-len(".npy")] + ".*"):  # every file of the entry but its lock
        if not src.name.endswith(".lock"):
            shutil.copyfile(src, target.path.with_name(target.path.name[:-len(".npy")] + src.name[len(source.path.name) - 4:]))
    forget_verified()  # a new process
    with pytest.warns(RuntimeWarning, match=rf"{target.path.name}.*split='test', expected 'id_test'"):
        served = decode_split(fmow, ids, 16, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(served), direct(fmow, ids, 16))
