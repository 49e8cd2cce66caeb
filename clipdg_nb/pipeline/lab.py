"""JupyterLab as `make lab` starts it (`SERVER_OPTIONS`): it offers only the project's kernel, while
the notebook files keep naming the portable `python3` (papermill, nbclient and CI run them anywhere):
`pre_save` writes it back, and drops outputs from committed notebooks."""
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
