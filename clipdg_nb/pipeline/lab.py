"""JupyterLab as `make lab` starts it: the notebooks open with the project's kernel, "Python (clipdg-nb)",
while their files keep naming the portable `python3`.

Why not write `clipdg-nb` into the notebooks: papermill (and nbclient, and CI) start the kernel the
notebook names and stop with "No such kernel" where it is not installed, so plain
`papermill notebooks/01_zero_shot.ipynb out.ipynb` would fail on every machine that never ran
`make lab`. So the notebooks name `python3`, which every Jupyter has, and the lab `make lab` starts
offers one kernel only, clipdg-nb (`KernelSpecManager.allowed_kernelspecs`): JupyterLab finds no
`python3` there and takes the one kernel of the notebook's language (Python). A save in that lab
would write `clipdg-nb` into the file; `pre_save`, the lab's pre-save hook, writes `python3` back, and
the committed notebooks without outputs whatever autosave sends (a hook, not a git filter such as
nbstripout: the file on disk stays clean, as git and the tests see it). The Makefile passes `SERVER_OPTIONS`.
"""
from __future__ import annotations

KERNEL_NAME = "clipdg-nb"
KERNEL_DISPLAY_NAME = "Python (clipdg-nb)"
PORTABLE_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
SERVER_OPTIONS = (f"--KernelSpecManager.allowed_kernelspecs={KERNEL_NAME}",
                  f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
                  "--ContentsManager.pre_save_hook=clipdg_nb.pipeline.lab.pre_save")


def pre_save(model: dict, path: str = "", **_) -> None:
    """A notebook saved with the project's kernel is written naming `python3`; one under notebooks/ without
    outputs, counts or widget state (the lab still shows them; an executed copy: Save As into outputs/)."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    metadata = model["content"].setdefault("metadata", {})
    if (metadata.get("kernelspec") or {}).get("name") == KERNEL_NAME:
        metadata["kernelspec"] = dict(PORTABLE_KERNELSPEC)
    if str(path).lstrip("/").startswith("notebooks/"):  # relative to the lab's root, the repository
        metadata.pop("widgets", None)
        for cell in model["content"].get("cells", []):
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None


if __name__ == "__main__":  # `make lab` reads the server options from here
    print(" ".join(SERVER_OPTIONS))
