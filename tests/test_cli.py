"""The `clipdg` command line: synth writes loadable folders; bad input names the problem."""
from __future__ import annotations

import subprocess
import sys

from clipdg_nb.cli import main


def test_synth_then_plain_wilds_loads(tmp_path):
    # a separate, plain Python process: nothing of ours imported
    out = subprocess.run([sys.executable, "-m", "clipdg_nb.cli", "synth", "--root", str(tmp_path), "--image-size", "16"],
                         capture_output=True, text=True, check=True).stdout
    assert "fmow" in out and "iwildcam" in out and "OOD test" in out
    code = ("import wilds,sys; ds=[wilds.get_dataset(n, root_dir=sys.argv[1], download=False) for n in ('fmow','iwildcam')];"
            "print([len(d) for d in ds])")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout


def test_summary_of_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["summary", "--root", str(tmp_path / "none"), "--datasets", "fmow"]) == 2
    err = capsys.readouterr().err
    assert "fmow_v1.1" in err and "download=True" in err


def test_summary_says_when_the_data_is_synthetic(synth_root, tmp_path, capsys):
    import shutil

    assert main(["summary", "--root", str(synth_root), "--datasets", "fmow"]) == 0
    out = capsys.readouterr().out
    assert "OOD test" in out and f"SYNTHETIC data, written by `clipdg synth` ({synth_root / 'fmow_v1.1' / 'SYNTHETIC.json'})" in out
    shutil.copytree(synth_root / "fmow_v1.1", tmp_path / "fmow_v1.1")
    (tmp_path / "fmow_v1.1" / "SYNTHETIC.json").unlink()  # a copy without clipdg synth's marker reads as real
    assert main(["summary", "--root", str(tmp_path), "--datasets", "fmow"]) == 0
    out = capsys.readouterr().out
    assert "OOD test" in out and "SYNTHETIC" not in out


def test_synth_refuses_to_overwrite_a_real_dataset(tmp_path, capsys):
    real = tmp_path / "fmow_v1.1"
    real.mkdir()
    (real / "rgb_metadata.csv").write_text("precious")
    assert main(["synth", "--root", str(tmp_path), "--datasets", "fmow"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (real / "rgb_metadata.csv").read_text() == "precious"


def test_prepare_decodes_every_split_an_experiment_needs_once(synth_root, tmp_path, capsys):
    import yaml

    from clipdg_nb.images import SplitCache
    from clipdg_nb.data import load_dataset
    from clipdg_nb.pipeline.experiment import load_experiment
    from clipdg_nb.pipeline.prepare import plan

    root = tmp_path / "project"
    root.mkdir()
    notebooks = __import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks"
    doc = {"experiment": "prep", "defaults": {"dataset": "fmow", "root_dir": str(synth_root), "pretrained": None,
                                                 "cache_dir": "outputs/cache"},
           "stages": [{"name": "zs", "notebook": str(notebooks / "01_zero_shot.ipynb"),
                       "params": {"eval_splits": ["id_val", "test"]}},
                      {"name": "sweep", "notebook": str(notebooks / "02_few_shot_sweep.ipynb"),
                       "grid": {"fraction": [0.1, 0.5]},
                       "params": {"methods": ["linear_probe", "vision_only"], "vision_arch": "tiny",
                                  "vision_weights": None, "eval_splits": ["test"]}}]}
    path = root / "prep.yaml"
    path.write_text(yaml.safe_dump(doc))
    needs = plan(load_experiment(path, root=root))
    cache = str(root / "outputs/cache/decoded")
    # CLIP tiny at 32 px, the tiny vision-only ViT at its config's 32 px: one entry, the union of splits
    assert needs == {("fmow", str(synth_root), cache, 32): {"train", "id_val", "test"}}
    import os
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["prepare", str(path), "--no-progress", "--workers", "2"]) == 0
        first = capsys.readouterr().out
        assert main(["prepare", str(path), "--no-progress"]) == 0
        again = capsys.readouterr().out
    finally:
        os.chdir(cwd)
    ds = load_dataset("fmow", synth_root)
    n = sum(len(SplitCache(ds, s, 32, cache)) for s in ("train", "id_val", "test"))
    assert f"{n} image(s) decoded now" in first and "0 image(s) decoded now" in again
    for split in ("train", "id_val", "test"):
        assert SplitCache(ds, split, 32, cache).marks()[0].all()


def test_an_os_error_is_one_line_naming_the_path_and_free_space_exit_1(tmp_path, capsys, monkeypatch):
    import errno

    from clipdg_nb.pipeline import runner

    target = tmp_path / "outputs" / "runs" / "x.json"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    (tmp_path / "t.yaml").write_text("experiment: t\nstages:\n  - name: s\n    notebook: nb.ipynb\n")
    import nbformat
    nbformat.write(nbformat.v4.new_notebook(), str(tmp_path / "nb.ipynb"))
    monkeypatch.setattr(runner, "run_experiment", full)
    assert main(["run", str(tmp_path / "t.yaml"), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(target) in err and "free on the filesystem of" in err and "disk (or quota) is full" in err, err

    def safetensors_full(*args, **kwargs):  # a library's own words for a full disk, naming no file
        raise RuntimeError("SafetensorError: Error while serializing: IoError(Os { code: 28, kind: "
                           "StorageFull, message: \"No space left on device\" }) os error 28")

    monkeypatch.setattr(runner, "run_experiment", safetensors_full)
    assert main(["run", str(tmp_path / "t.yaml"), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "free on the filesystem of" in err, err
