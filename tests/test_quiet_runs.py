"""Quiet runs: a point's kernel prints no warning about TCP and no ERROR line at its end, and the
tiny model's intended random init is said in the project's words, not as open_clip's "No pretrained weights loaded" warning."""
from __future__ import annotations

import logging
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from clipdg_nb.pipeline.point import kernel_options


def test_a_notebook_run_through_the_runner_prints_no_kernel_error(tmp_path, capfd):
    import papermill
    nb = new_notebook(cells=[new_code_cell("x = 6 * 7\nprint(x)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    with tempfile.TemporaryDirectory(prefix="clipdg-kernel-") as sockets:  # as point._execute does
        papermill.execute_notebook(str(tmp_path / "tiny.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   progress_bar=False, **kernel_options(sockets))
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"].strip() == "42"
    captured = capfd.readouterr()  # the kernel's stderr is this process's (it inherits fd 2)
    assert "KeyboardInterrupt" not in captured.err + captured.out
    assert "without encryption" not in captured.err  # IPC sockets: ipykernel's TCP warning does not apply
    assert "ERROR" not in captured.err


def test_pretraining_says_random_init_once_in_its_own_words(tmp_path, capfd, caplog):
    from clipdg_nb.demo.pretrain import PretrainConfig, pretrain_tiny
    lines = []
    cfg = PretrainConfig(n_images=40, steps=1, batch_size=8, supervised_steps=1)
    with caplog.at_level(logging.WARNING):
        pretrain_tiny(tmp_path, cfg, log=lines.append)
    captured = capfd.readouterr()
    assert "No pretrained weights" not in caplog.text + captured.err + captured.out
    assert sum("from random weights" in line for line in lines) == 1, lines
    # the filter is gone afterwards: open_clip's warning still shows where random init is not intended
    import open_clip
    with caplog.at_level(logging.WARNING):
        open_clip.create_model("clipdg-tiny-vit", pretrained=None)
    assert "No pretrained weights" in caplog.text
