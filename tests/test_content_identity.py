"""Content, not names: a run and a cache are keyed and checked by what they read.

Each fault of issue 18 (items 1 and 2) is one test here, checked against a ground truth computed
from scratch (a fresh cache folder, a fresh output folder): a damaged decoded-image cache or
feature file is rebuilt with a `CacheRebuiltWarning` naming it, a replaced image or overwritten
weights file is recomputed, other data under one `root_dir` is another run; the same weights by
another path, or a moved data folder, are the same run."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipdg_nb import methods
from clipdg_nb.config import FinetuneConfig, ZeroShotConfig
from clipdg_nb.data import load_dataset, split_indices
from clipdg_nb.images import SplitCache, decode_split, image_path, resize_crop
from clipdg_nb.runs import Run

FOLDER = "fmow_v1.1"
CONTENT_ENV = "CLIPDG_CONTENT_FINGERPRINT"  # the opt-in content fingerprint (issue 26)


def flip(path: Path, offset: int, n: int) -> None:
    """Invert n bytes of a file in place at `offset` (its size, and so any header, intact)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = np.frombuffer(fh.read(n), dtype=np.uint8) ^ np.uint8(0xFF)
        fh.seek(offset)
        fh.write(data.tobytes())


def rebuilt(caught) -> list[str]:
    """Messages of the CacheRebuiltWarnings among caught warnings (by class name, so that this
    module also runs, and fails, on code that has no such class)."""
    return [str(w.message) for w in caught if type(w.message).__name__ == "CacheRebuiltWarning"]


def run(cfg, **changes):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = methods.run(dataclasses.replace(cfg, **changes), progress=False)
    return record, caught


def copy_fmow(src_root: Path, dst_root: Path) -> Path:
    shutil.copytree(src_root / FOLDER, dst_root / FOLDER)  # copy2: mtimes kept
    return dst_root


def save_tiny_clip(path: Path, seed: int) -> Path:
    from clipdg_nb.models import load_clip, save_weights
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(load_clip("clipdg-tiny-vit").model, path)
    return path


def direct(dataset, indices, size):
    geometry = resize_crop(size)
    return np.stack([np.array(geometry(dataset.get_input(int(i)).convert("RGB"))) for i in indices])


@pytest.fixture
def common(tmp_path):
    return dict(output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), model="clipdg-tiny-vit",
                eval_batch_size=256)


def zero_shot(root, weights, common, **kw):
    return ZeroShotConfig(root_dir=str(root), pretrained=str(weights), **{**common, **kw})


def probe(root, common, **kw):
    return FinetuneConfig(root_dir=str(root), method="linear_probe", pretrained=None, probe_cs=(1.0,),
                          **{**common, **kw})


def random_zero_shot(root, common, **kw):
    """Zero-shot with a seeded random-init CLIP: the cheapest run that reads images through the
    decode and feature caches."""
    return ZeroShotConfig(root_dir=str(root), pretrained=None, **{**common, **kw})


# --- (a) the decoded-image cache ------------------------------------------------------------

def test_a_flipped_megabyte_in_the_decoded_cache_is_found_and_decoded_again(easy_root, tmp_path, common):
    cfg = FinetuneConfig(root_dir=str(easy_root), method="finetune", text_mode="frozen", lr=3e-3, epochs=1,
                         swa=False, pretrained=None, vision_arch="tiny", vision_weights=None, batch_size=64,
                         experiment="fresh", **common)
    fresh, _ = run(cfg)
    ds = load_dataset("fmow", easy_root)
    train = SplitCache(ds, "train", 32, Path(common["cache_dir"]) / "decoded")
    size = train.path.stat().st_size
    assert size > 1_500_000  # 620 rows of 32x32x3: the megabyte lies inside the rows, header intact
    flip(train.path, size // 2 - 500_000, 1_000_000)
    assert train._state()[0] is None and train.path.stat().st_size == size  # what the old check saw
    again, caught = run(cfg, experiment="again")
    assert again["metrics"] == fresh["metrics"]
    messages = rebuilt(caught)
    assert messages and all(str(train.path) in m for m in messages), [str(w.message) for w in caught]
    rows = split_indices(ds, "train")
    assert np.array_equal(np.asarray(decode_split(ds, rows, 32, Path(common["cache_dir"]) / "decoded")),
                          direct(ds, rows, 32))


def test_a_swapped_page_or_a_lost_checksum_file_is_found_too(fmow, tmp_path):
    idx = split_indices(fmow, "id_val")[:6]
    decode_split(fmow, idx, 64, cache_dir=tmp_path)  # 64x64x3 = 12 KiB a row: three pages
    cache = SplitCache(fmow, "id_val", 64, tmp_path)
    arr = np.load(cache.path, mmap_mode="r+")
    row = arr[cache.rows_of([idx[2]])[0]].reshape(-1)
    a, b = row[:4096].copy(), row[4096:8192].copy()
    assert not np.array_equal(a, b)
    row[:4096], row[4096:8192] = b, a  # the same bytes, two pages swapped: a plain sum would not see it
    arr.flush()
    del arr, row
    with pytest.warns(RuntimeWarning, match=cache.path.name) as caught:
        out = decode_split(fmow, idx, 64, cache_dir=tmp_path)
    assert rebuilt(caught) and np.array_equal(np.asarray(out), direct(fmow, idx, 64))
    from clipdg_nb.images.cache import forget_verified
    cache.meta_path.unlink()
    forget_verified()  # a new process
    with pytest.warns(RuntimeWarning, match="meta file .* is missing"):
        out = decode_split(fmow, idx, 64, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(out), direct(fmow, idx, 64)) and cache.marks()[1] is not None


def test_rows_are_verified_once_per_process(fmow, tmp_path, monkeypatch):
    from clipdg_nb.images import cache as image_cache
    idx = split_indices(fmow, "test")[:10]
    decode_split(fmow, idx, 16, cache_dir=tmp_path)
    image_cache.forget_verified()
    hashed = []
    real = image_cache.row_sums
    monkeypatch.setattr(image_cache, "row_sums", lambda rows: hashed.append(len(rows)) or real(rows))
    decode_split(fmow, idx, 16, cache_dir=tmp_path)
    decode_split(fmow, idx[:4], 16, cache_dir=tmp_path)  # verified already: not hashed again
    assert sum(hashed) == len(idx)


# --- (b) the feature cache ------------------------------------------------------------------

def test_b_flipped_4kb_in_a_feature_file_is_found_and_recomputed(easy_root, tmp_path, common):
    cfg = probe(easy_root, common, experiment="fresh")
    fresh, _ = run(cfg)
    files = sorted((Path(common["cache_dir"]) / "features").glob("*.pt"), key=lambda p: p.stat().st_size)
    damaged = files[-1]  # the train split's: the largest
    size = damaged.stat().st_size
    assert size > 3 * 4096
    flip(damaged, size // 2 - 2048, 4096)
    again, caught = run(cfg, experiment="again")
    assert again["metrics"] == fresh["metrics"]
    messages = rebuilt(caught)
    assert len(messages) == 1 and str(damaged) in messages[0], [str(w.message) for w in caught]


# --- (c) an image replaced after the caches exist -------------------------------------------

def test_c_a_replaced_image_gives_new_features(easy_root, tmp_path, common):
    root = copy_fmow(easy_root, tmp_path / "data")
    cfg = random_zero_shot(root, common, experiment="before")
    run(cfg)
    ds = load_dataset("fmow", root)
    ids = split_indices(ds, "id_test")
    target, other = image_path(ds, int(ids[3])), image_path(ds, int(ids[40]))
    shutil.copyfile(other, target)  # another valid image at the same path
    again, _ = run(cfg, experiment="after")
    truth, _ = run(cfg, experiment="truth", output_dir=str(tmp_path / "truth"), cache_dir=str(tmp_path / "c2"))
    assert again["metrics"] == truth["metrics"]
    got = Run.of(dataclasses.replace(cfg, experiment="after")).predictions("id_test")
    want = Run.of(dataclasses.replace(cfg, experiment="truth", output_dir=str(tmp_path / "truth"),
                                      cache_dir=str(tmp_path / "c2"))).predictions("id_test")
    pd.testing.assert_frame_equal(got, want)


# --- (d) weights overwritten at the same path -----------------------------------------------

def test_d_overwritten_weights_are_a_new_run_with_fresh_numbers(easy_root, tmp_path, common):
    weights = save_tiny_clip(tmp_path / "w" / "tiny.safetensors", seed=0)
    cfg = zero_shot(easy_root, weights, common, experiment="e")
    first, _ = run(cfg)
    st = weights.stat()
    save_tiny_clip(weights, seed=1)  # other bytes, same path (and size) ...
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... even with the old mtime put back
    assert weights.stat().st_size == st.st_size
    assert Run.of(cfg).id != first["run_id"]
    second, _ = run(cfg)
    assert second["run_id"] != first["run_id"] and second["created_at"] >= first["created_at"]
    truth, _ = run(cfg, output_dir=str(tmp_path / "truth"), cache_dir=str(tmp_path / "c2"))
    assert second["metrics"] == truth["metrics"] != first["metrics"]
    assert second["inputs"]["weights"]["pretrained"]["sha256"] != first["inputs"]["weights"]["pretrained"]["sha256"]
    # under another experiment name too (the feature cache alone must not serve the old features)
    third, _ = run(cfg, experiment="other")
    assert third["metrics"] == truth["metrics"]


# --- (e) other data under the same root_dir -------------------------------------------------

def test_e_other_data_under_the_same_root_is_not_reused(synth_root, easy_root, tmp_path, common):
    root = copy_fmow(synth_root, tmp_path / "data")
    cfg = random_zero_shot(root, common, experiment="e")
    first, _ = run(cfg)
    shutil.rmtree(root / FOLDER)
    copy_fmow(easy_root, root)  # another FMoW, same root_dir
    second, _ = run(cfg)
    truth, _ = run(cfg, root_dir=str(easy_root), output_dir=str(tmp_path / "truth"), cache_dir=str(tmp_path / "c2"))
    assert second["run_id"] != first["run_id"]
    assert second["metrics"] == truth["metrics"] != first["metrics"]
    assert second["inputs"]["dataset"]["digest"] == truth["inputs"]["dataset"]["digest"]


# --- (f) the same weights by another path ---------------------------------------------------

def test_f_the_same_weights_by_a_relative_or_absolute_path_or_a_copy_are_one_run(easy_root, tmp_path, common,
                                                                                 monkeypatch):
    monkeypatch.setenv("CLIPDG_ROOT", str(tmp_path))  # relative parameters resolve from here
    weights = save_tiny_clip(tmp_path / "w" / "tiny.safetensors", seed=0)
    copy = tmp_path / "elsewhere" / "copy.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(weights, copy)
    cfgs = [zero_shot(easy_root, w, common, experiment="e")
            for w in ("w/tiny.safetensors", weights, copy, "w/../w/tiny.safetensors")]
    assert len({Run.of(c).id for c in cfgs}) == 1
    first, _ = run(cfgs[0])
    for cfg in cfgs[1:]:
        assert run(cfg)[0]["created_at"] == first["created_at"]  # reused, not recomputed


def test_weights_are_hashed_once_per_change(tmp_path, monkeypatch, synth_root, common):
    from clipdg_nb import fingerprint
    weights = save_tiny_clip(tmp_path / "w.safetensors", seed=0)
    (tmp_path / "cache").mkdir()
    hashed = []
    real = fingerprint.sha256_of_file
    monkeypatch.setattr(fingerprint, "sha256_of_file", lambda p: hashed.append(Path(p).name) or real(p))
    cfg = zero_shot(synth_root, weights, common).validate()
    first = Run.of(cfg).id
    assert Run.of(cfg).id == first and hashed.count("w.safetensors") == 1
    assert (tmp_path / "cache" / fingerprint.DIGEST_MEMO).is_file()


# --- (g) a moved data folder ----------------------------------------------------------------

def test_g_a_moved_data_folder_is_reused_and_a_copy_with_new_mtimes_is_not(synth_root, tmp_path, common):
    root = copy_fmow(synth_root, tmp_path / "a")
    cfg = random_zero_shot(root, common, experiment="e")
    first, _ = run(cfg)
    moved = tmp_path / "b"
    os.rename(root, moved)  # mv: names, sizes, mtimes kept
    again, _ = run(cfg, root_dir=str(moved))
    assert again["run_id"] == first["run_id"] and again["created_at"] == first["created_at"]
    # `cp -r` without -p gives the files new mtimes: to us that is other data (recomputed, never reused wrongly)
    copied = tmp_path / "c"
    shutil.copytree(moved / FOLDER, copied / FOLDER)
    for path in (copied / FOLDER / "images").iterdir():
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    assert Run.of(dataclasses.replace(cfg, root_dir=str(copied)).validate()).id != first["run_id"]


# --- a sweep point is done by content (issue 26, item 1) -------------------------------------

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def zero_shot_project(synth_root, tmp_path) -> tuple[Path, Path, Path]:
    """A one-point experiment over 01_zero_shot reading its own copy of FMoW and its own weights
    file, both changed in place by the tests. Returns the experiment file, the data and the weights."""
    import yaml

    root = copy_fmow(synth_root, tmp_path / "data")
    weights = save_tiny_clip(tmp_path / "w" / "tiny.safetensors", seed=0)
    doc = {"experiment": "t", "defaults": {"dataset": "fmow", "root_dir": str(root), "model": "clipdg-tiny-vit",
                                           "pretrained": str(weights), "output_dir": "outputs/runs",
                                           "cache_dir": "outputs/cache", "eval_splits": ["id_test", "test"]},
           "stages": [{"name": "zero_shot", "notebook": str(NOTEBOOKS / "01_zero_shot.ipynb"),
                       "params": {"gallery_size": 0}}]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, root / FOLDER, weights


def sweep(path: Path, capsys) -> str:
    from clipdg_nb.cli import main

    assert main(["run", str(path), "--root", str(path.parent), "--no-progress"]) == 0
    return capsys.readouterr().out


def table(path: Path, capsys) -> str:
    from clipdg_nb.cli import main

    assert main(["table", "--experiment", "t", "--output-dir", str(path.parent / "outputs/runs"), "--all-lrs"]) == 0
    return capsys.readouterr().out


def current_and_superseded(path: Path) -> tuple[list[dict], list[dict]]:
    from clipdg_nb.runs import load_records

    every = load_records(path.parent / "outputs/runs/t", include_superseded=True)
    current = load_records(path.parent / "outputs/runs/t")
    ids = {r["run_id"] for r in current}
    return current, [r for r in every if r["run_id"] not in ids]


def rerun_replaces(path: Path, capsys, first_out: str) -> dict:
    """The rerun after an in-place change executes the point; the old run is kept, marked
    superseded by the point, and out of `load_records` and `clipdg table`; a rerun after that skips."""
    assert "1 done, 0 skipped" in sweep(path, capsys)
    current, old = current_and_superseded(path)
    assert len(current) == 1 and len(old) == 1 and current[0]["run_id"] != old[0]["run_id"]
    mark = Run(path.parent / "outputs/runs/t" / old[0]["run_id"]).superseded()
    assert mark["by"] == ["t/zero_shot/default"] and mark["reason"] and mark["at"]
    marker = json.loads((path.parent / "outputs/notebooks/t/zero_shot/default.done.json").read_text())
    assert [Path(d).name for d in marker["run_dirs"]] == [current[0]["run_id"]]
    out = table(path, capsys)
    assert out != first_out
    assert "0 done, 1 skipped" in sweep(path, capsys)
    return current[0]


@pytest.mark.slow
def test_a_sweep_point_runs_again_when_its_weights_file_changed_in_place(synth_root, tmp_path, capsys):
    from clipdg_nb.fingerprint import sha256_of_file

    path, _, weights = zero_shot_project(synth_root, tmp_path)
    assert "1 done, 0 skipped" in sweep(path, capsys)
    first_table = table(path, capsys)
    assert "0 done, 1 skipped" in sweep(path, capsys)  # (c) nothing changed: skipped
    save_tiny_clip(weights, seed=1)  # a retrained checkpoint saved over the old file
    new = rerun_replaces(path, capsys, first_table)
    assert new["inputs"]["weights"]["pretrained"]["sha256"] == sha256_of_file(weights)


@pytest.mark.slow
def test_b_a_sweep_point_runs_again_when_its_metadata_was_relabelled_in_place(synth_root, tmp_path, capsys):
    from clipdg_nb.fingerprint import sha256_of_file

    path, data, _ = zero_shot_project(synth_root, tmp_path)
    assert "1 done, 0 skipped" in sweep(path, capsys)
    first_table = table(path, capsys)
    meta = pd.read_csv(data / "rgb_metadata.csv")
    test = meta["split"] == "test"
    meta.loc[test, "category"] = meta.loc[test, "category"].to_numpy()[::-1]  # the OOD test labels relabelled
    assert (meta.loc[test, "category"] != pd.read_csv(data / "rgb_metadata.csv").loc[test, "category"]).any()
    meta.to_csv(data / "rgb_metadata.csv", index=False)
    new = rerun_replaces(path, capsys, first_table)
    assert new["inputs"]["dataset"]["metadata"]["rgb_metadata.csv"] == sha256_of_file(data / "rgb_metadata.csv")


# --- issue 26 (3): a cache file says what it holds ------------------------------------------

def test_a_feature_file_copied_under_another_splits_name_is_recomputed(synth_root, tmp_path, common):
    cfg = random_zero_shot(synth_root, common, experiment="fresh")  # id_test and test: 62 images each
    run(cfg)
    features = Path(common["cache_dir"]) / "features"
    (target,), (source,) = features.glob("fmow-id_test-*.pt"), features.glob("fmow-test-*.pt")
    shutil.copyfile(source, target)  # the OOD-test features under the ID-test name: a valid file
    again, caught = run(cfg, experiment="again")
    messages = rebuilt(caught)
    assert len(messages) == 1 and str(target) in messages[0] and "split='test', expected 'id_test'" in messages[0]
    truth, _ = run(cfg, experiment="truth", output_dir=str(tmp_path / "truth"), cache_dir=str(tmp_path / "c2"))
    (reference,) = (tmp_path / "c2" / "features").glob("fmow-id_test-*.pt")
    assert torch.equal(torch.load(target)["features"], torch.load(reference)["features"])  # the served tensor
    assert again["metrics"] == truth["metrics"]


def test_pretrained_weights_copied_over_each_other_are_pretrained_again(tmp_path):
    from clipdg_nb.demo.pretrain import PretrainConfig, pretrain_tiny
    from clipdg_nb.fingerprint import sha256_of_file
    cfg = PretrainConfig(n_images=64, steps=2, supervised_steps=2, batch_size=32)
    first = pretrain_tiny(tmp_path, cfg, log=lambda *a: None)
    clip_digest = sha256_of_file(first.clip)
    shutil.copyfile(first.vision, first.clip)  # a weights file under the other's name
    with pytest.warns(RuntimeWarning, match=r"pretrain.*clip=") as caught:
        again = pretrain_tiny(tmp_path, cfg, log=lambda *a: None)
    assert rebuilt(caught) and sha256_of_file(again.clip) == clip_digest  # deterministic: the same bytes again


# --- issue 26 (4): the opt-in content fingerprint -------------------------------------------

def replace_keeping_size_and_mtime(target: Path, other: Path) -> None:
    """Other pixels in `target`'s file (same inode), padded to its byte size (PIL ignores bytes after
    a PNG's IEND), with its mtime put back: what `rsync -t` or a restore tool can leave."""
    st, data = target.stat(), other.read_bytes()
    assert len(data) <= st.st_size
    with open(target, "r+b") as fh:
        fh.write(data + b"\0" * (st.st_size - len(data)))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns


def test_an_image_replaced_with_size_and_mtime_kept_is_seen_only_with_the_content_fingerprint(
        synth_root, tmp_path, common, monkeypatch):
    root = copy_fmow(synth_root, tmp_path / "data")
    cfg = random_zero_shot(root, common, experiment="e").validate()
    ds = load_dataset("fmow", root)
    paths = sorted((image_path(ds, int(i)) for i in split_indices(ds, "id_test")), key=lambda p: p.stat().st_size)
    target, other = paths[-1], paths[0]  # the largest file, and a smaller one to pad
    cache = Path(common["cache_dir"]) / "decoded"
    off = Run.of(cfg).id
    monkeypatch.setenv(CONTENT_ENV, "1")
    on = Run.of(cfg).id
    on_key = SplitCache(ds, "id_test", 16, cache).key
    assert on != off
    decode_split(ds, split_indices(ds, "id_test"), 16, cache)
    replace_keeping_size_and_mtime(target, other)
    monkeypatch.delenv(CONTENT_ENV)
    assert Run.of(cfg).id == off  # off (the default), the fingerprint reads no byte: not seen (documented)
    monkeypatch.setenv(CONTENT_ENV, "1")
    assert Run.of(cfg).id != on and SplitCache(ds, "id_test", 16, cache).key != on_key
    served = decode_split(ds, split_indices(ds, "id_test"), 16, cache)
    assert np.array_equal(np.asarray(served), direct(ds, split_indices(ds, "id_test"), 16))


def test_the_content_fingerprint_reads_each_image_once_per_change(synth_root, tmp_path, monkeypatch):
    from clipdg_nb import fingerprint
    folder = copy_fmow(synth_root, tmp_path / "data") / FOLDER
    memo = tmp_path / "cache"
    memo.mkdir()
    monkeypatch.setenv(CONTENT_ENV, "1")
    hashed = []
    real = fingerprint.sha256_of_file
    monkeypatch.setattr(fingerprint, "sha256_of_file", lambda p: hashed.append(Path(p).name) or real(p))
    first = fingerprint.dataset_fingerprint(folder, memo)
    images = first["images"]["files"]
    assert first["images"]["content"] and len(hashed) >= images
    for process_memo in (fingerprint._IMAGE_DIGESTS, fingerprint._MEMO_FILES):
        process_memo.clear()  # a new process: only the memo file under the cache folder is left
    hashed.clear()
    assert fingerprint.dataset_fingerprint(folder, memo) == first and len(hashed) == 0
    one = next((folder / "images").iterdir())
    st = one.stat()
    one.write_bytes(one.read_bytes())  # the same bytes rewritten: read again, same fingerprint
    os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint.dataset_fingerprint(folder, memo) == first and hashed == [one.name]


def test_by_default_the_fingerprint_and_so_the_run_ids_are_what_they_were(synth_root, monkeypatch):
    """The default fingerprint, recomputed here as it was specified before the content option
    (names, sizes, whole-second mtimes; metadata files by sha256), so no run id changes."""
    import hashlib
    import json

    from clipdg_nb import fingerprint
    monkeypatch.delenv(CONTENT_ENV, raising=False)
    folder = synth_root / FOLDER
    metadata = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
    lines = sorted(f"{p.relative_to(folder).as_posix()}\t{p.stat().st_size}\t{p.stat().st_mtime_ns // 10**9}\n"
                   for p in folder.rglob("*") if p.is_file() and p.parent != folder)
    images = {"files": len(lines), "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.parent != folder),
              "listing": hashlib.sha256("".join(lines).encode()).hexdigest()}
    digest = hashlib.sha256(json.dumps([metadata, images], sort_keys=True).encode()).hexdigest()
    assert fingerprint.dataset_fingerprint(folder) == {"metadata": metadata, "images": images, "digest": digest}
