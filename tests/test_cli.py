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


def test_synth_refuses_to_overwrite_a_real_dataset(tmp_path, capsys):
    real = tmp_path / "fmow_v1.1"
    real.mkdir()
    (real / "rgb_metadata.csv").write_text("precious")
    assert main(["synth", "--root", str(tmp_path), "--datasets", "fmow"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (real / "rgb_metadata.csv").read_text() == "precious"
