"""The notebooks' `parameters` cells, generated from the config dataclasses and the method registry:
a tool of this repository (it rewrites the committed notebooks), not of the package.

`python tools/parameter_cells.py --write` rewrites the cells of 01-03 and 05 after a change in
`config.py`; tests/test_notebook_params.py fails while a cell differs. Each line is a typed
assignment whose comment is the field's comment in config.py: `papermill --help-notebook` shows it as
the parameter's help, so list parameters carry in it how to pass a list (`-y`, YAML; `-p` passes text).
"""
from __future__ import annotations

import inspect
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from clipdg_nb.config import TRAINED_METHODS, FinetuneConfig, ZeroShotConfig, sizes_note, tuned_lists

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FORCE = "force: bool = False  # rerun even if a finished run with the same identity exists"
LIST_EXAMPLES = {"wise_alphas": "[0.0, 0.25, 0.5, 0.75]"}  # list fields whose default is empty
PROFILE = "# " + sizes_note(FinetuneConfig)  # atop the cells of the notebooks that train
# 03's and 05's own default output_dir, as their stages in demo.yaml: hand runs never read back 02's runs
# (05 needs kept weights; 03's EMA runs would join 02's lr choice). 04 reads 05's as soups_output_dir.
OWN_FOLDER = " (this notebook's own: hand runs of 02, 03 and 05 never mix)"


def list_hint(name: str, example: str) -> str:
    """How to pass a list with papermill, for a parameter's help: `-p` would pass the text '[...]'."""
    return f'; a list: papermill -y "{name}: {example}"'


# The generated parameters cells: the dataclass's fields (typed, with the comment of their line in
# config.py as help), less `skip`, with the notebook's own parameters before / after them.
GENERATED = {
    "01_zero_shot": dict(cls=ZeroShotConfig, skip=("method",), after=(
        "gallery_size: int = 12  # failures shown in the static gallery", FORCE)),
    "02_few_shot_sweep": dict(cls=FinetuneConfig, skip=("method", "lr", *tuned_lists().values()), before=(
        PROFILE, f"methods: list = ['finetune']  # methods trained at this point: {', '.join(TRAINED_METHODS)}"
        + list_hint("methods", "[linear_probe, finetune]"),
        "lrs: list = [0.0001]  # learning rates tried for each trained method (probes run once)"
        + list_hint("lrs", "[1.0e-4, 1.0e-5]"),
        *(f"{plural}: list = [{getattr(FinetuneConfig, name)!r}]  # {name} values tried like lrs, each chosen on "
          "validation (by the methods that read it)" + list_hint(plural, f"[{getattr(FinetuneConfig, name)!r}]")
          for plural, name in tuned_lists().items())), after=(FORCE,)),
    "03_swa_ablation": dict(cls=FinetuneConfig, overrides={"output_dir": "outputs/runs/ablation"}, before=(PROFILE,), after=(
        "gallery_size: int = 8  # examples per category in the static comparison gallery", FORCE)),
    # keep_weights is not a knob here: the soup stage's runs always keep their final weights
    "05_model_soups": dict(cls=FinetuneConfig, skip=("lr", "keep_weights"), overrides={"output_dir": "outputs/runs/soups"},
                           before=(PROFILE, "lrs: list = [0.001, 0.0003, 0.0001]  # learning rates of the runs averaged into "
                                   "the soups of this (dataset, method, fraction, seed); 2 or more"
                                   + list_hint("lrs", "[1.0e-3, 3.0e-4, 1.0e-4]")), after=(FORCE,)),
}


def field_help(cls) -> dict:
    """name -> the comment ending the field's line in the class body (and its bases'); a trained
    method's choices come from the registry, so a new method shows up without editing any help."""
    helps = {}
    for klass in reversed(cls.__mro__[:-1]):
        for line in inspect.getsource(klass).splitlines():
            match = re.match(r"^    (\w+): [^=]+ = .+?  # (.+)$", line)
            if match:
                helps[match[1]] = match[2]
    if cls is FinetuneConfig:
        helps["method"] = " | ".join(TRAINED_METHODS)
    return helps


def _annotation(type_text: str) -> str:
    """Papermill-readable types: 'str | None' -> '"Optional[str]"' (quoted: never evaluated), tuple -> list."""
    if type_text.endswith(" | None"):
        return '"Optional[' + type_text[:-len(" | None")] + ']"'
    return {"tuple": "list"}.get(type_text, type_text)


def render_parameters(cls, skip=(), before=(), after=(), overrides={}) -> str:  # noqa: B006 (read only)
    helps, lines = field_help(cls), list(before)
    for f in fields(cls):
        if f.name in skip:
            continue
        value = overrides.get(f.name, f.default if f.default is not MISSING else f.default_factory())
        value = list(value) if isinstance(value, tuple) else value
        help_text = helps[f.name] + (OWN_FOLDER if f.name in overrides else "")
        if isinstance(value, list):
            help_text += list_hint(f.name, LIST_EXAMPLES.get(f.name) or "[" + ", ".join(map(str, value)) + "]")
        lines.append(f"{f.name}: {_annotation(str(f.type))} = {value!r}  # {help_text}")
    return "\n".join([*lines, *after])


def write_parameters_cells(notebooks: Path = NOTEBOOKS) -> None:
    import nbformat

    for name, spec in GENERATED.items():
        path = Path(notebooks) / f"{name}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = render_parameters(**spec)
        nbformat.write(nb, str(path))


if __name__ == "__main__" and "--write" in sys.argv:
    write_parameters_cells()
