"""`make lab` opens the notebooks with "Python (clipdg-nb)" while their files name `python3`, so plain
papermill runs them where that kernel was never installed (the browser check: test_browser_lab.py)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat

from clipdg_nb.pipeline.lab import KERNEL_DISPLAY_NAME, KERNEL_NAME, SERVER_OPTIONS, pre_save

ROOT = Path(__file__).resolve().parents[1]


def make_lab_commands() -> list[str]:
    """The commands `make lab` would run (dry run: nothing is installed or started)."""
    out = subprocess.run(["make", "-n", "-s", "lab", "VENV=/venv"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if "/venv/bin/" in line]


def test_make_lab_installs_the_kernel_it_starts_the_lab_with():
    lines = make_lab_commands()
    install = next(line for line in lines if "ipykernel install" in line)
    assert "--sys-prefix" in install and f"--name {KERNEL_NAME}" in install
    assert f'--display-name "{KERNEL_DISPLAY_NAME}"' in install
    lab = next(line for line in lines if "jupyter lab" in line)
    assert "$(/venv/bin/python -m clipdg_nb.pipeline.lab)" in lab  # the options below, from one place
    assert any(f"allowed_kernelspecs={KERNEL_NAME}" in o for o in SERVER_OPTIONS)
    assert any(f"default_kernel_name={KERNEL_NAME}" in o for o in SERVER_OPTIONS)
    printed = subprocess.run(["python", "-m", "clipdg_nb.pipeline.lab"], capture_output=True, text=True, check=True)
    assert printed.stdout.split() == list(SERVER_OPTIONS)


def test_a_save_in_the_lab_keeps_the_pre_save():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}
    model = {"type": "notebook", "content": nb}
    pre_save(model=model, path="notebooks/x.ipynb", contents_manager=None)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    other = {"type": "notebook", "content": {"metadata": {"kernelspec": {"name": "ir"}}}}
    pre_save(model=other, path="x.ipynb")
    assert other["content"]["metadata"]["kernelspec"] == {"name": "ir"}  # another language's kernel: left alone
    pre_save(model={"type": "file", "content": "text"}, path="x.txt")


def test_a_save_in_the_lab_writes_a_committed_notebook_without_outputs(tmp_path):
    """Through jupyter_server's own contents manager, configured as `make lab` configures it."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    hook = next(o.split("=", 1)[1] for o in SERVER_OPTIONS if o.startswith("--ContentsManager.pre_save_hook="))
    cm = FileContentsManager(root_dir=str(tmp_path), pre_save_hook=hook)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell(
        "print(1)", execution_count=3, outputs=[nbformat.v4.new_output("stream", text="1\n")])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "outputs").mkdir()
    for path in ("notebooks/x.ipynb", "outputs/x.ipynb"):
        cm.save({"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))}, path)
    committed = nbformat.read(str(tmp_path / "notebooks/x.ipynb"), as_version=4)
    code = committed.cells[1]
    assert code.source == "print(1)" and code.outputs == [] and code.execution_count is None
    assert "widgets" not in committed.metadata and committed.cells[0].source == "# t"
    elsewhere = nbformat.read(str(tmp_path / "outputs/x.ipynb"), as_version=4)  # an executed copy keeps its outputs
    assert elsewhere.cells[1].outputs[0].text == "1\n" and elsewhere.cells[1].execution_count == 3


def test_committed_notebooks_name_the_kernel_every_jupyter_has():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nbformat.read(str(path), as_version=4).metadata["kernelspec"]["name"] == "python3", path.name
