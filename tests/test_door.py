"""Weights and output folders checked at the door: one clear message naming the file or setting,
before any data is loaded or anything computed."""
from __future__ import annotations

import os

import pytest
import torch

from clipdg_nb import methods
from clipdg_nb import models as M
from clipdg_nb.config import FinetuneConfig, ZeroShotConfig
from clipdg_nb.models.weights import WeightsFileError, WeightsMismatchError
from clipdg_nb.paths import FolderNotWritableError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights of both tiny configs, a torchvision tiny ViT, junk and truncated copies."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    M.save_weights(M.load_clip("clipdg-tiny-vit").model, folder / "tiny32.safetensors")
    M.save_weights(M.load_clip("clipdg-tiny-vit-64").model, folder / "tiny64.safetensors")
    torch.save(M.vision_only(5, arch="tiny", image_size=32).backbone.state_dict(), folder / "tv_tiny.pt")
    data = (folder / "tiny32.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "junk.safetensors").write_bytes(b"<html>404 Not Found</html>" * 10)
    (folder / "junk.pt").write_bytes(b"not a zip, not a pickle" * 10)
    torch.save(M.load_clip("clipdg-tiny-vit").model.state_dict(), folder / "tiny32.pt")
    pt = (folder / "tiny32.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(pt[: len(pt) // 2])
    return folder


def test_weights_of_another_clip_architecture(files):
    # open_clip alone would interpolate the 64 px position embeddings to 32 px without a word
    with pytest.raises(WeightsMismatchError) as err:
        M.load_clip("clipdg-tiny-vit", files / "tiny64.safetensors")
    msg = str(err.value)
    assert msg.startswith(f"pretrained='{files / 'tiny64.safetensors'}' does not fit model_name='clipdg-tiny-vit': "
                          "the file holds an open_clip CLIP with image size 64 (patch 8)")
    assert "but model_name='clipdg-tiny-vit' expects an open_clip CLIP with image size 32 (patch 8)" in msg
    assert "visual.positional_embedding [65, 64] in the file vs [17, 64] expected" in msg
    assert "Pass the model_name the weights were made for" in msg
    with pytest.raises(WeightsMismatchError, match=r"image size 32 .* but model_name='clipdg-tiny-vit-64'"):
        M.load_clip("clipdg-tiny-vit-64", files / "tiny32.safetensors")
    # a torchvision state dict is no CLIP: open_clip's load_state_dict error becomes the same one message
    with pytest.raises(WeightsMismatchError, match=r"holds a torchvision ViT with image size 32 \(patch 8\), "
                                                   r"width 64 / 2 layers, but model_name='clipdg-tiny-vit'"):
        M.load_clip("clipdg-tiny-vit", files / "tv_tiny.pt")
    M.load_clip("clipdg-tiny-vit", files / "tiny32.safetensors")  # the right one loads


def test_weights_of_another_vision_architecture(files):
    with pytest.raises(WeightsMismatchError) as err:
        M.vision_only(5, arch="vit_b_32", weights=files / "tv_tiny.pt")
    msg = str(err.value)
    assert msg.startswith(f"vision_weights='{files / 'tv_tiny.pt'}' does not fit vision_arch='vit_b_32': the file "
                          "holds a torchvision ViT with image size 32 (patch 8), width 64 / 2 layers, but "
                          "vision_arch='vit_b_32' expects a torchvision ViT with image size 224 (patch 32), "
                          "width 768 / 12 layers")
    assert "conv_proj.weight [64, 3, 8, 8] in the file vs [768, 3, 32, 32] expected" in msg
    with pytest.raises(WeightsMismatchError, match="These are open_clip CLIP weights: use vision_arch='clip-visual'"):
        M.vision_only(5, arch="tiny", weights=files / "tiny32.safetensors", image_size=32)
    saved = M.vision_only(5, arch="tiny", image_size=32)
    M.save_weights(saved, files / "classifier5.safetensors")
    with pytest.raises(WeightsMismatchError, match=r"head for 5 classes .* head.weight \[5, 64\] in the file "
                                                   r"vs \[7, 64\]"):
        M.vision_only(7, arch="tiny", weights=files / "classifier5.safetensors", image_size=32)


@pytest.mark.parametrize("name,cause", [
    ("junk.safetensors", "SafetensorError: Error while deserializing header: header too large"),
    ("truncated.safetensors", "SafetensorError: Error while deserializing header: incomplete metadata"),
    ("junk.pt", ""), ("truncated.pt", "failed finding central directory")])
def test_unreadable_weights_files(files, name, cause):
    path = files / name
    for load, what in ((lambda: M.load_clip("clipdg-tiny-vit", path), "pretrained"),
                       (lambda: M.vision_only(5, arch="tiny", weights=path, image_size=32), "vision_weights"),
                       (lambda: M.read_state_dict(path), "weights file")):
        with pytest.raises(WeightsFileError) as err:
            load()
        msg = str(err.value)
        assert msg.startswith(f"{what}='{path}' is not a readable weights file (") and cause in msg
        assert "truncated (an interrupted download or copy?)" in msg


def test_missing_weights_files_name_their_setting(tmp_path, monkeypatch):
    gone = str(tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"^pretrained='{gone}': no such file"):
        M.load_clip("clipdg-tiny-vit", gone)
    with pytest.raises(FileNotFoundError, match=rf"^vision_weights='{gone}': no such file"):
        M.vision_only(5, arch="tiny", weights=gone, image_size=32)
    # vision_arch='clip-visual' hands vision_weights to load_clip: the error still says vision_weights
    cfg = FinetuneConfig(method="vision_only", vision_arch="clip-visual", vision_weights=gone).validate()
    with pytest.raises(FileNotFoundError, match=rf"^vision_weights='{gone}': no such file"):
        methods._vision_model(cfg)


def _no_data(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the data was loaded before the door was checked")
    monkeypatch.setattr(methods, "load_dataset", refuse)


def test_run_checks_weights_before_loading_data(tmp_path, monkeypatch, files, synth_root):
    _no_data(monkeypatch)
    common = dict(root_dir=str(synth_root), output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    gone = str(tmp_path / "gone.safetensors")
    # a missing file is a missing input: named, with what to run to make the default ones
    with pytest.raises(FileNotFoundError, match=rf"pretrained='{gone}' is not a file"):
        methods.run(ZeroShotConfig(pretrained=gone, **common))
    for arch in ("clip-visual", "tiny"):
        with pytest.raises(FileNotFoundError, match=rf"vision_weights='{gone}'"):
            methods.run(FinetuneConfig(method="vision_only", vision_arch=arch, vision_weights=gone, **common))
    with pytest.raises(WeightsFileError, match=r"^pretrained='.*junk.safetensors' is not a readable weights file"):
        methods.run(ZeroShotConfig(pretrained=str(files / "junk.safetensors"), **common))


def test_run_reports_unwritable_output_and_cache_up_front(tmp_path, monkeypatch):
    """chmod does not stop root (these tests run as root here), so the folder lies under a regular
    FILE: it can never be created, for any user. The read-only variant below runs where chmod bites."""
    _no_data(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(FolderNotWritableError) as err:
        methods.run(ZeroShotConfig(output_dir=str(blocker / "runs"), cache_dir=str(tmp_path / "cache")))
    msg = str(err.value)
    assert isinstance(err.value, PermissionError)
    assert msg.startswith(f"output_dir: cannot write to {blocker / 'runs' / 'scratch'}: {blocker} is a file")
    assert "nothing was computed" in msg
    with pytest.raises(FolderNotWritableError, match=rf"^cache_dir: cannot write to {blocker / 'cache'}: "):
        methods.run(ZeroShotConfig(output_dir=str(tmp_path / "runs"), cache_dir=str(blocker / "cache")))
    assert not list((tmp_path / "runs").rglob("*.lock"))  # not even the run was claimed
    # an existing folder that refuses files (what chmod 500 does to anyone but root)
    import clipdg_nb.paths

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(clipdg_nb.paths.tempfile, "mkstemp", refuse)
    with pytest.raises(FolderNotWritableError, match=rf"^output_dir: cannot write to {tmp_path / 'runs' / 'scratch'}: "
                                                     r"cannot write in .* \(Permission denied\)"):
        methods.run(ZeroShotConfig(output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (the test above covers root)")
def test_run_reports_read_only_output_up_front(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(FolderNotWritableError, match=rf"^output_dir: cannot write to {locked / 'scratch'}"):
            methods.run(ZeroShotConfig(output_dir=str(locked), cache_dir=str(tmp_path / "cache")))
    finally:
        locked.chmod(0o700)


def test_identical_prompts_are_named_at_the_door_and_a_names_file_tells_them_apart(tmp_path, synth_root, run_kwargs):
    """iWildCam names four pairs of classes alike up to case (3 'Lowland paca' / 148 'lowland paca',
    two scientific names for one species): CLIP's tokenizer lowercases, so their prompts and logits
    are identical. The run says so once, naming them, records them, and a class_names.csv in the
    dataset folder (part of the data fingerprint) tells them apart."""
    import shutil
    import warnings

    from clipdg_nb.data import CLASS_NAMES_FILE, DatasetFormatError, class_names
    shutil.copytree(synth_root / "iwildcam_v2.0", tmp_path / "data" / "iwildcam_v2.0")
    cfg = dict(dataset="iwildcam", root_dir=str(tmp_path / "data"), eval_splits=("id_val",), **run_kwargs)
    for key in ("vision_arch", "vision_weights", "batch_size"):
        cfg.pop(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = methods.run(ZeroShotConfig(**cfg))
    said = [str(w.message) for w in caught if "identical prompts" in str(w.message)]
    assert len(said) == 1
    assert "3 'Lowland paca' = 148 'lowland paca'; 19 'Jaguarundi' = 174 'jaguarundi'" in said[0]
    assert str(tmp_path / "data" / "iwildcam_v2.0" / CLASS_NAMES_FILE) in said[0]
    assert [[c["y"] for c in group] for group in record["identical_prompts"]] == [[3, 148], [19, 174], [82, 178],
                                                                                 [153, 181]]
    assert record["identical_prompts"][0][1] == {"y": 148, "name": "lowland paca"}
    names_file = tmp_path / "data" / "iwildcam_v2.0" / CLASS_NAMES_FILE
    names_file.write_text("y,name\n148,agouti paca\n174,puma yagoroundi\n178,ave desconocida\n181,mazama temama\n")
    folder = tmp_path / "data" / "iwildcam_v2.0"
    assert class_names("iwildcam", folder)[146:149] == class_names("iwildcam")[146:148] + ["agouti paca"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        renamed = methods.run(ZeroShotConfig(**cfg))
    assert not [w for w in caught if "identical prompts" in str(w.message)]
    assert renamed["run_id"] != record["run_id"] and "identical_prompts" not in renamed
    for text, match in (("y,label\n3,x\n", "columns y,name"), ("y,name\n182,x\n", r"y=\[182\]"),
                        ("y,name\n3,a\n3,b\n", r"y=\[3\]"), ("y,name\n3,\n", r"y=\[3\]")):
        names_file.write_text(text)
        with pytest.raises(DatasetFormatError, match=match):
            class_names("iwildcam", folder)


def test_a_weights_folder_is_named_as_a_folder(tmp_path, files, synth_root):
    from clipdg_nb.pipeline.validate import missing_file
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, hint in ((files, f"one of the weights files in it, e.g. '{files}/"), (empty, "this folder holds none")):
        for load, what in ((lambda: M.load_clip("clipdg-tiny-vit", folder), "pretrained"),
                           (lambda: M.vision_only(5, arch="tiny", weights=folder, image_size=32), "vision_weights"),
                           (lambda: M.read_state_dict(folder), "weights file")):
            with pytest.raises(FileNotFoundError) as err:
                load()
            assert str(err.value).startswith(f"{what}='{folder}' is a folder, not a weights file: pass ")
            assert hint in str(err.value)
        assert missing_file("pretrained", str(folder), tmp_path).startswith(f"pretrained='{folder}' is a folder")
    common = dict(root_dir=str(synth_root), output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=rf"pretrained='{empty}' is a folder, not a weights file"):
        methods.run(ZeroShotConfig(pretrained=str(empty), **common))
    M.save_local_dir(M.load_clip("clipdg-tiny-vit"), tmp_path / "model_dir")
    with pytest.raises(FileNotFoundError, match=r"is an open_clip model folder, not a weights file: pass "
                                                r"model='local-dir:.*model_dir' and pretrained=None"):
        M.load_clip("clipdg-tiny-vit", tmp_path / "model_dir")
