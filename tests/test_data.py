"""The WILDS data layer: real loaders over synthetic folders, splits, subsets, samplers, names."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import wilds

from clipdg_nb import data
from clipdg_nb.analysis.tables import split_summary
from clipdg_nb.data import DatasetNotFoundError, fraction_indices, load_dataset, split_indices


@pytest.mark.parametrize("name", ["fmow", "iwildcam"])
def test_unmodified_wilds_loader_reads_synthetic_folder(synth_root, name):
    ds = wilds.get_dataset(name, root_dir=str(synth_root), download=False)
    assert type(ds).__module__.startswith("wilds.datasets")
    assert len(ds) > 0 and ds.n_classes == {"fmow": 62, "iwildcam": 182}[name]
    x, y, meta = ds[0]
    assert x.size == (32, 32) and int(y) == int(ds.y_array[0])


@pytest.mark.parametrize("name", ["fmow", "iwildcam"])
def test_every_split_non_empty_and_disjoint(synth_root, name):
    ds = load_dataset(name, synth_root)
    seen = set()
    for split in data.SPLITS:
        idx = split_indices(ds, split)
        assert len(idx) > 0, split
        assert seen.isdisjoint(idx.tolist()), split
        seen |= set(idx.tolist())
    # the WILDS split arrays agree with ours
    assert len(seen) == int((np.asarray(ds.split_array) >= 0).sum())


def test_fmow_splits_follow_years(fmow):
    years = data.metadata_column(fmow, "year") + 2002
    assert years[split_indices(fmow, "train")].max() < 2013
    assert set(years[split_indices(fmow, "val")]) <= {2013, 2014, 2015}
    assert years[split_indices(fmow, "test")].min() >= 2016


def test_iwildcam_ood_locations_unseen_in_train(iwildcam):
    loc = data.metadata_column(iwildcam, "location")
    train_locs = set(loc[split_indices(iwildcam, "train")])
    for split in ("val", "test"):
        assert train_locs.isdisjoint(loc[split_indices(iwildcam, split)])
    assert set(loc[split_indices(iwildcam, "id_test")]) <= train_locs


def test_mixed_fmow_timestamps_need_the_shim(tmp_path):
    from clipdg_nb.demo.synthetic import SynthConfig, write_synthetic
    from wilds.datasets.fmow_dataset import FMoWDataset
    cfg = SynthConfig(fmow_sizes={"train": 62, "id_val": 5, "id_test": 5, "val": 5, "test": 5},
                      mixed_timestamps=True)
    write_synthetic(tmp_path, datasets=["fmow"], cfg=cfg)
    stamps = pd.read_csv(tmp_path / "fmow_v1.1" / "rgb_metadata.csv")["timestamp"]
    assert stamps.str.contains(r"\.\d{3}Z$").any() and (~stamps.str.contains(r"\.\d{3}Z$")).any()
    if int(pd.__version__.split(".")[0]) >= 2:
        with pytest.raises(ValueError):
            FMoWDataset(version="1.1", root_dir=str(tmp_path), download=False)
    ds = load_dataset("fmow", tmp_path)
    years = pd.to_datetime(stamps, format="ISO8601", utc=True).dt.year.to_numpy()
    # WILDS's year field is relative to 2002; the shimmed loader must parse every row
    assert np.array_equal(data.metadata_column(ds, "year") + 2002, years[ds.full_idxs])
    assert pd.api.types.is_datetime64_any_dtype(ds.metadata["timestamp"])


def test_missing_dataset_error_names_path_size_and_remedy(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fmow", tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "fmow_v1.1") in msg
    assert "53.9 GB" in msg and "download=True" in msg and "root_dir" in msg
    assert not (tmp_path / "nowhere").exists()  # a failed load creates nothing
    with pytest.raises(DatasetNotFoundError, match="12.0 GB"):
        load_dataset("iwildcam", tmp_path)


def test_unknown_dataset_and_split_names():
    with pytest.raises(ValueError, match="dataset='camelyon'.*fmow"):
        load_dataset("camelyon", "data")
    with pytest.raises(ValueError, match="dataset="):
        data.class_names("imagenet")


def test_unknown_split(fmow):
    with pytest.raises(ValueError, match="split='ood_test'"):
        split_indices(fmow, "ood_test")


# Subsets are validated once, at the config boundary (the library trusts validated values).
@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.1", None, True])
def test_bad_fraction_rejected_with_its_name(bad):
    from clipdg_nb.config import FinetuneConfig
    with pytest.raises(ValueError, match="fraction"):
        FinetuneConfig(fraction=bad).validate()


@pytest.mark.parametrize("bad", [-1, 1.5, "1", None, False])
def test_bad_seed_rejected_with_its_name(bad):
    from clipdg_nb.config import FinetuneConfig
    with pytest.raises(ValueError, match="seed"):
        FinetuneConfig(seed=bad).validate()


@pytest.mark.parametrize("stratify", [False, True])
def test_subsets_deterministic_nested_and_inside_train(fmow, stratify):
    train = set(split_indices(fmow, "train").tolist())
    prev = set()
    for frac in (0.03, 0.05, 0.1, 0.3, 0.5, 1.0):
        a = fraction_indices(fmow, frac, seed=3, stratify=stratify)
        b = fraction_indices(fmow, frac, seed=3, stratify=stratify)
        assert np.array_equal(a, b)
        assert set(a.tolist()) <= train and prev <= set(a.tolist())
        prev = set(a.tolist())
    assert prev == train  # 100 % is the whole split
    assert not np.array_equal(fraction_indices(fmow, 0.3, 3, stratify), fraction_indices(fmow, 0.3, 4, stratify))


def test_subset_is_machine_independent(fmow):
    # Pinned: the draw must not change across machines or releases (PCG64 from integer seeds).
    # If this fails, every published subset changed: bump a subset version, don't edit the number.
    idx = fraction_indices(fmow, 0.05, seed=0)
    assert len(idx) == round(0.05 * 248)
    rng = np.random.default_rng([0, __import__("zlib").crc32(b"fmow"), 0])
    pool = split_indices(fmow, "train")
    assert np.array_equal(idx, np.sort(pool[rng.permutation(len(pool))][: len(idx)]))


def test_stratified_subset_keeps_rare_classes(iwildcam):
    y = np.asarray(iwildcam.y_array)
    train_classes = set(y[split_indices(iwildcam, "train")])
    plain = fraction_indices(iwildcam, 0.05, seed=0)
    strat = fraction_indices(iwildcam, 0.05, seed=0, stratify=True)
    assert set(y[strat]) == train_classes
    assert len(set(y[plain])) < len(train_classes)


def test_group_uniform_sampler_balances_groups_and_replays(fmow):
    idx = split_indices(fmow, "train")
    groups = data.metadata_column(fmow, "region")[idx]
    sampler = data.GroupUniformSampler(groups, seed=1, num_samples=20000)
    sampler.set_epoch(2)
    draw = np.fromiter(sampler, dtype=int)
    freq = np.bincount(groups[draw]) / len(draw)
    present = np.unique(groups)
    assert np.allclose(freq[present], 1 / len(present), atol=0.02)  # uniform over regions
    counts = np.bincount(groups)
    assert counts[present].max() / counts[present].min() > 2  # while the data itself is not
    sampler.set_epoch(2)
    assert np.array_equal(draw, np.fromiter(sampler, dtype=int))
    sampler.set_epoch(3)
    assert not np.array_equal(draw, np.fromiter(sampler, dtype=int))


def test_shuffle_sampler_is_a_permutation_per_epoch():
    s = data.SAMPLERS["shuffle"](np.zeros(50), 0)
    s.set_epoch(0)
    order = list(s)
    assert sorted(order) == list(range(50)) and order != list(range(50))
    from clipdg_nb.config import FinetuneConfig
    with pytest.raises(ValueError, match="sampler='random'"):
        FinetuneConfig(sampler="random").validate()


def test_class_names_and_templates():
    fm, iw = data.class_names("fmow"), data.class_names("iwildcam")
    assert len(fm) == 62 and "airport hangar" in fm and all("_" not in c for c in fm)
    assert len(iw) == 182 and iw[0] == "empty" and iw[1] == "White-lipped peccary"
    assert data.prompt_templates("fmow") == ["a centered satellite photo of {c}"]
    assert data.prompt_templates("iwildcam") == ["this is a photo of {c}"]
    assert len(data.prompt_templates("fmow", "ensemble")) == 16
    assert data.render_prompt("aerial photo of {article} {c}.", "airport") == "aerial photo of an airport."
    with pytest.raises(ValueError, match="templates='many'"):
        data.prompt_templates("fmow", "many")


# ---------------------------------------------------------------------------------------------
# Bad data at the door: each corruption of a WILDS folder gives one clear error naming the file
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def door_root(tmp_path_factory):
    """A small intact copy of both datasets; each test corrupts its own copy of it."""
    from clipdg_nb.demo.synthetic import SynthConfig, write_synthetic
    root = tmp_path_factory.mktemp("door")
    write_synthetic(root, cfg=SynthConfig(seed=2, image_size=8,
                                          fmow_sizes={"train": 20, "id_val": 4, "id_test": 4, "val": 4, "test": 4},
                                          iwildcam_sizes={"train": 182, "id_val": 3, "id_test": 3, "val": 3, "test": 3},
                                          iwildcam_locations={"id": 2, "val": 1, "test": 1}))
    return root


@pytest.fixture
def copy_of(door_root, tmp_path):
    import shutil

    def copy(name):
        folder = tmp_path / data.dataset_spec(name).folder
        shutil.copytree(door_root / folder.name, folder)
        return folder
    return copy


def _door_error(name, root):
    with pytest.raises(data.DatasetFormatError) as err:
        load_dataset(name, root)
    assert isinstance(err.value, ValueError)
    return str(err.value)


def test_intact_copies_pass_the_door(door_root):
    assert len(load_dataset("fmow", door_root)) == 36 and len(load_dataset("iwildcam", door_root)) == 194


def test_removed_fmow_row_is_an_error_not_relabelled_images(copy_of):
    folder = copy_of("fmow")
    meta = pd.read_csv(folder / "rgb_metadata.csv")
    meta.drop(index=10).to_csv(folder / "rgb_metadata.csv", index=False)
    msg = _door_error("fmow", folder.parent)  # 36 images in splits + 3 sequestered rows
    assert f"{folder / 'rgb_metadata.csv'} has 38 rows but {folder / 'images'} holds 39 images" in msg
    assert "rgb_img_38.png exists" in msg and "clipdg synth" in msg
    # an added row, and a missing last image, too
    pd.concat([meta, meta.iloc[:1]]).to_csv(folder / "rgb_metadata.csv", index=False)
    assert "has 40 rows but" in _door_error("fmow", folder.parent)
    meta.to_csv(folder / "rgb_metadata.csv", index=False)
    (folder / "images" / "rgb_img_38.png").unlink()
    msg = _door_error("fmow", folder.parent)
    assert "has 39 rows but" in msg and "holds 38 images" in msg and "rgb_img_38.png is missing" in msg


@pytest.mark.parametrize("name,file,column", [
    ("fmow", "rgb_metadata.csv", "country_code"), ("fmow", "rgb_metadata.csv", "timestamp"),
    ("fmow", "country_code_mapping.csv", "region"), ("iwildcam", "metadata.csv", "location_remapped"),
    ("iwildcam", "metadata.csv", "filename")])
def test_missing_column_names_file_and_column(copy_of, name, file, column):
    folder = copy_of(name)
    pd.read_csv(folder / file).drop(columns=[column]).to_csv(folder / file, index=False)
    msg = _door_error(name, folder.parent)
    assert f"{folder / file} lacks the column(s) ['{column}']" in msg
    assert "download=True" in msg and f"clipdg synth --root {folder.parent}" in msg


@pytest.mark.parametrize("name,file", [("fmow", "country_code_mapping.csv"), ("iwildcam", "metadata.csv")])
def test_missing_or_empty_metadata_file(copy_of, name, file):
    folder = copy_of(name)
    (folder / file).write_text("")
    assert "the file is empty" in _door_error(name, folder.parent)
    (folder / file).unlink()
    assert f"{folder / file} is missing" in _door_error(name, folder.parent)


def test_missing_iwildcam_image_and_bad_values(copy_of):
    folder = copy_of("iwildcam")
    meta = pd.read_csv(folder / "metadata.csv")
    (folder / "train" / meta["filename"].iloc[-1]).unlink()
    msg = _door_error("iwildcam", folder.parent)
    assert "metadata.csv names images that are not there" in msg and meta["filename"].iloc[-1] in msg
    meta.assign(split=meta["split"].replace({"test": "ood_test"})).to_csv(folder / "metadata.csv", index=False)
    msg = _door_error("iwildcam", folder.parent)  # the loader's KeyError, in words
    assert "could not read" in msg and "KeyError: 'ood_test'" in msg and "split name" in msg
    meta.assign(y=meta["y"].replace({5: 4})).to_csv(folder / "metadata.csv", index=False)
    assert "AssertionError; y never takes the value(s) [5]" in _door_error("iwildcam", folder.parent)


def test_unknown_fmow_category_and_empty_split(copy_of):
    folder = copy_of("fmow")
    meta = pd.read_csv(folder / "rgb_metadata.csv")
    bad = meta.assign(category=meta["category"].where(meta.index != 3, "castle"))
    bad.to_csv(folder / "rgb_metadata.csv", index=False)
    assert "KeyError: 'castle'" in _door_error("fmow", folder.parent)
    meta.assign(split=meta["split"].replace({"val": "Val"})).to_csv(folder / "rgb_metadata.csv", index=False)
    assert "gives no rows to the split(s) ['id_val', 'val']" in _door_error("fmow", folder.parent)


# ---------------------------------------------------------------------------------------------
# The registry: specs, class names from the dataset's own files, the one data-present rule
# ---------------------------------------------------------------------------------------------

def test_a_spec_missing_a_required_field_fails_naming_it():
    import dataclasses

    from clipdg_nb.data.spec import DatasetSpec, SpecError
    complete = {f.name: getattr(data.DATASETS["fmow"], f.name) for f in dataclasses.fields(DatasetSpec)}
    for field in ("version", "required_columns", "image_paths", "class_names", "real_size", "id_metric"):
        with pytest.raises(SpecError, match=f"dataset spec 'fmow' lacks the required field '{field}'"):
            DatasetSpec(**{k: v for k, v in complete.items() if k != field})
    with pytest.raises(SpecError, match="splits \\['id_val', 'ood'\\] must include 'train'"):
        DatasetSpec(**{**complete, "splits": ("id_val", "ood")})
    assert DatasetSpec(**complete) == data.DATASETS["fmow"]


def test_class_names_come_from_the_datasets_own_files(copy_of):
    folder = copy_of("iwildcam")
    categories = pd.read_csv(folder / "categories.csv")
    assert list(categories.columns) == ["y", "category_id", "name"]  # the release's layout
    assert data.class_names("iwildcam", folder) == data.class_names("iwildcam")  # same table as the bundled copy
    # the folder's categories.csv decides the label order: swap two categories there and the names follow
    swapped = categories.copy()
    swapped.loc[[1, 2], ["category_id", "name"]] = categories.loc[[2, 1], ["category_id", "name"]].to_numpy()
    swapped.to_csv(folder / "categories.csv", index=False)
    names = data.class_names("iwildcam", load_dataset("iwildcam", folder.parent))
    assert names[1] == "Central American agouti" and names[2] == "White-lipped peccary"
    # a category the English table does not know keeps WILDS's scientific name
    swapped.loc[3, ["category_id", "name"]] = [99999, "newus speciesus"]
    swapped.to_csv(folder / "categories.csv", index=False)
    assert data.class_names("iwildcam", folder)[3] == "newus speciesus"
    # FMoW names come from WILDS's own list and never from another dataset's files
    fmow_names = data.class_names("fmow", folder)
    assert len(fmow_names) == 62 and fmow_names == data.class_names("fmow")


def test_data_present_is_the_release_marker(copy_of):
    folder = copy_of("fmow")
    assert data.data_present(folder.parent, "fmow") and not data.data_present(folder.parent, "iwildcam")
    (folder / "RELEASE_v1.1.txt").unlink()
    assert not data.data_present(folder.parent, "fmow")
    with pytest.raises(DatasetNotFoundError, match="RELEASE_v1.1.txt"):
        load_dataset("fmow", folder.parent)


def test_eval_splits_default_to_the_splits_a_dataset_has():
    assert data.dataset_splits("fmow", data.EVAL_SPLITS) == ("id_val", "id_test", "val", "test")
    assert data.dataset_splits("iwildcam", ["id_val", "test"]) == ("id_val", "test")


# ---------------------------------------------------------------------------------------------
# Camelyon17: one module, read by the unmodified WILDS loader, no id_test split
# ---------------------------------------------------------------------------------------------

def test_camelyon17_synthetic_is_the_wilds_format(camelyon17_root, camelyon17):
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
    folder = camelyon17_root / "camelyon17_v1.0"
    header = (folder / "metadata.csv").read_text().splitlines()[0]
    assert header == ",patient,node,x_coord,y_coord,tumor,slide,center,split"  # the release's, index unnamed
    plain = Camelyon17Dataset(root_dir=str(camelyon17_root), download=False)  # unmodified WILDS reads it
    assert len(plain) == len(camelyon17) == 220 and plain.n_classes == 2
    first = plain._input_array[0]
    assert first.startswith("patches/patient_") and (folder / first).is_file()
    assert data.DATASETS["camelyon17"].image_paths(camelyon17, [0]) == [first]
    # hospital shift: train and ID val from centres 0/3/4, OOD val centre 1, OOD test centre 2
    hospital = data.metadata_column(camelyon17, "hospital")
    assert {s: sorted(set(hospital[split_indices(camelyon17, s)].tolist())) for s in ("train", "id_val", "val", "test")} \
        == {"train": [0, 3, 4], "id_val": [0, 3, 4], "val": [1], "test": [2]}
    assert list(split_summary(camelyon17)["split"]) == ["train", "id_val", "val", "test"]
    assert data.class_names("camelyon17", camelyon17) == ["normal", "tumor"]
    assert data.prompt_templates("camelyon17") == ["a histopathology patch of {c} lymph node tissue"]
    assert len(data.prompt_templates("camelyon17", "ensemble")) == 5


def test_camelyon17_has_no_id_test_and_says_so(camelyon17):
    with pytest.raises(ValueError, match=r"split='id_test': WILDS's camelyon17 has no such split; it has"):
        split_indices(camelyon17, "id_test")
    assert data.dataset_splits("camelyon17", data.EVAL_SPLITS) == ("id_val", "val", "test")
    with pytest.raises(ValueError, match=r"dataset 'camelyon17' has no split\(s\) \['id_test'\]"):
        data.dataset_splits("camelyon17", ["id_test", "test"])
    from clipdg_nb.config import ZeroShotConfig
    assert ZeroShotConfig(dataset="camelyon17").validate().eval_splits == ("id_val", "val", "test")
    assert ZeroShotConfig(dataset="fmow").validate().eval_splits == ("id_val", "id_test", "val", "test")
    sub = fraction_indices(camelyon17, 0.1, seed=0)
    assert len(sub) == 12 and set(sub) <= set(split_indices(camelyon17, "train"))


def test_camelyon17_at_the_door(camelyon17_root, tmp_path):
    import shutil
    folder = tmp_path / "camelyon17_v1.0"
    shutil.copytree(camelyon17_root / folder.name, folder)
    meta = pd.read_csv(folder / "metadata.csv", index_col=0, dtype={"patient": "str"})
    meta.drop(columns=["center"]).to_csv(folder / "metadata.csv")
    assert f"{folder / 'metadata.csv'} lacks the column(s) ['center']" in _door_error("camelyon17", tmp_path)
    meta.to_csv(folder / "metadata.csv")
    last = meta.iloc[-1]
    image = (folder / f"patches/patient_{last.patient}_node_{last.node}/"
             f"patch_patient_{last.patient}_node_{last.node}_x_{last.x_coord}_y_{last.y_coord}.png")
    image.unlink()
    msg = _door_error("camelyon17", tmp_path)
    assert "names images that are not there" in msg and image.name in msg


def test_a_new_datasets_synth_fields_stay_out_of_the_others_markers(door_root, camelyon17_root):
    """Adding Camelyon17's SynthConfig fields left FMoW's and iWildCam's SYNTHETIC.json as they were
    (so existing copies stay current and `clipdg synth` writes the same bytes)."""
    import json
    for name in ("fmow", "iwildcam"):
        marker = json.loads((door_root / data.dataset_spec(name).folder / "SYNTHETIC.json").read_text())
        assert not [k for k in marker if k.startswith("camelyon17")]
    marker = json.loads((camelyon17_root / "camelyon17_v1.0" / "SYNTHETIC.json").read_text())
    assert marker["camelyon17_slides_per_centre"] == 2 and "fmow_sizes" in marker


@pytest.mark.parametrize("name, prefix", [("iwildcam", "train/"), ("camelyon17", "")])
def test_image_paths_are_the_files_the_wilds_loader_opens(name, prefix, request):
    """image_paths reads metadata.csv itself (WILDS keeps the names private): the same files, in order."""
    dataset = request.getfixturevalue(name)
    every = np.arange(len(dataset))[::-1]
    reference = [f"{prefix}{f}" for f in np.asarray(dataset._input_array)[every]]  # what get_input opens
    assert data.DATASETS[name].image_paths(dataset, every) == reference
