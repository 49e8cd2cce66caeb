"""The notebooks' `parameters` cells stay in step with the config dataclasses (no kernel needed)."""
from __future__ import annotations

import ast
import inspect
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import nbformat
import papermill
import pytest

from clipdg_nb.config import TRAINED_METHODS, FinetuneConfig, ZeroShotConfig, from_params, tuned_lists
from clipdg_nb.datasets import VALIDATION_SPLITS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = ["01_zero_shot", "02_few_shot_sweep", "03_swa_ablation", "04_analysis"]
NOTEBOOK_ONLY = {"force": False}  # extra parameters a notebook may add beside its dataclass's
FORCE = "force: bool = False  # rerun even if a finished run with the same identity exists"
# The generated parameters cells: the dataclass's fields (typed, with the comment of their line in
# config.py as help), less `skip`, with the notebook's own parameters before / after them.
# `python tests/test_notebook_params.py --write` regenerates them after a change in config.py.
GENERATED = {
    "01_zero_shot": dict(cls=ZeroShotConfig, skip=("method",), after=(
        "gallery_size: int = 12  # failures shown in the static gallery", FORCE)),
    "02_few_shot_sweep": dict(cls=FinetuneConfig, skip=("method", "lr", *tuned_lists().values()), before=(
        f"methods: list = ['finetune']  # methods trained at this point: {', '.join(TRAINED_METHODS)}",
        "lrs: list = [0.0001]  # learning rates tried for each trained method (probes run once)",
        *(f"{plural}: list = [{getattr(FinetuneConfig, name)!r}]  # {name} values tried like lrs, each chosen on "
          "validation (by the methods that read it)" for plural, name in tuned_lists().items())), after=(FORCE,)),
    "03_swa_ablation": dict(cls=FinetuneConfig, after=(
        "gallery_size: int = 8  # examples per category in the static comparison gallery", FORCE)),
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


def render_parameters(cls, skip=(), before=(), after=()) -> str:
    helps, lines = field_help(cls), list(before)
    for f in fields(cls):
        if f.name in skip:
            continue
        value = f.default if f.default is not MISSING else f.default_factory()
        value = list(value) if isinstance(value, tuple) else value
        lines.append(f"{f.name}: {_annotation(str(f.type))} = {value!r}  # {helps[f.name]}")
    return "\n".join([*lines, *after])


def write_parameters_cells() -> None:
    for name, spec in GENERATED.items():
        path = NOTEBOOKS / f"{name}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = render_parameters(**spec)
        nbformat.write(nb, str(path))


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_parameters_cells_are_generated_from_the_dataclasses(name):
    nb = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == render_parameters(**GENERATED[name]), (
        f"{name}: its parameters cell differs from clipdg_nb/config.py; run `python tests/test_notebook_params.py --write`")


def parameters(name: str) -> dict:
    """name -> default value, parsed from the single `parameters` cell (with ast, as literals)."""
    nb = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        # typed, so that `papermill --help-notebook` shows each parameter's type
        assert isinstance(node, ast.AnnAssign), f"{name}: one typed assignment per line (`name: type = value`)"
        values[node.target.id] = ast.literal_eval(node.value)
    return values


def defaults(cls) -> dict:
    out = {}
    for f in fields(cls):
        value = f.default if f.default is not MISSING else f.default_factory()
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.mark.parametrize("name", ALL)
def test_committed_clean_with_python3_kernel_and_documented_parameters(name):
    nb = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: commit without outputs"
    # papermill reads every parameter with its help (what `papermill --help-notebook` prints)
    inspected = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    assert set(inspected) == set(parameters(name))
    missing_help = [p for p, info in inspected.items() if not info["help"]]
    assert not missing_help, f"{name}: give these parameters a `# comment`: {missing_help}"


def _check_mirror(name, cls, skip=(), extra=()):
    params, expected = parameters(name), defaults(cls)
    for key in skip:
        expected.pop(key)
    extras = {k: params[k] for k in set(params) - set(expected)}
    lacking = [k for k in expected if k not in params]
    assert not lacking, (f"{name}.ipynb lacks {lacking} of {cls.__name__}; add to its parameters cell: "
                         + "; ".join(f"`{k} = {expected[k]!r}  # <help>`" for k in lacking))
    assert set(extras) <= set(extra) | set(NOTEBOOK_ONLY), f"{name}: unexpected parameters {sorted(extras)}"
    mismatched = {k: (params[k], v) for k, v in expected.items() if params[k] != v}
    assert not mismatched, f"{name}: defaults differ from {cls.__name__} (notebook, dataclass): {mismatched}"
    for k, v in NOTEBOOK_ONLY.items():
        assert params.get(k, v) == v
    return params


def test_zero_shot_mirrors_zero_shot_config():
    params = _check_mirror("01_zero_shot", ZeroShotConfig, skip=("method",), extra=("gallery_size",))
    from_params(ZeroShotConfig, {k: v for k, v in params.items() if k in defaults(ZeroShotConfig)})


def test_sweep_mirrors_finetune_config_with_method_and_lr_lists():
    params = _check_mirror("02_few_shot_sweep", FinetuneConfig, skip=("method", "lr", *tuned_lists().values()),
                           extra=("methods", "lrs", *tuned_lists()))
    assert params["methods"] == [FinetuneConfig.method] and params["lrs"] == [FinetuneConfig.lr]


def test_ablation_mirrors_finetune_config():
    params = _check_mirror("03_swa_ablation", FinetuneConfig, extra=("gallery_size",))
    from_params(FinetuneConfig, {k: v for k, v in params.items() if k in defaults(FinetuneConfig)})


def test_analysis_chooses_on_validation_by_default():
    params = parameters("04_analysis")
    assert params["select_split"] in VALIDATION_SPLITS
    assert params["experiment"] == ZeroShotConfig.experiment and params["output_dir"] == ZeroShotConfig.output_dir
    assert 0 < params["level"] < 1


def test_finetune_configs_expand_methods_and_lrs():
    from clipdg_nb.methods import sweep_configs as finetune_configs

    namespace = {"epochs": 2, "swa_last_k": 1, "fraction": 0.1, "seed": 1, "methods": "ignored", "force": True}
    cfgs = finetune_configs(namespace, ["linear_probe", "finetune"], [1e-3, 1e-4])
    assert [(c.method, c.lr) for c in cfgs] == [("linear_probe", 1e-3), ("finetune", 1e-3), ("finetune", 1e-4)]
    assert all(c.epochs == 2 and c.fraction == 0.1 and c.seed == 1 for c in cfgs)
    assert cfgs[0].identity().get("lr") is None  # a probe has no learning rate in its identity
    with pytest.raises(ValueError, match="01_zero_shot"):
        finetune_configs(namespace, ["zeroshot"], [1e-4])
    with pytest.raises(ValueError, match="non-empty list"):
        finetune_configs(namespace, "finetune", [1e-4])
    with pytest.raises(ValueError, match="lrs"):
        finetune_configs(namespace, ["finetune"], 1e-4)
    with pytest.raises(ValueError, match="epochs"):
        finetune_configs({**namespace, "epochs": 0}, ["finetune"], [1e-4])


def test_parameters_show_only_what_the_notebook_reads():
    """01 (zero-shot) trains nothing: no subset fraction, no training batch size."""
    assert not {"fraction", "batch_size", "stratify"} & set(parameters("01_zero_shot"))
    inspected = papermill.inspect_notebook(str(NOTEBOOKS / "03_swa_ablation.ipynb"))
    unknown = [k for k, info in inspected.items() if info["inferred_type_name"] in ("None", None)]
    assert not unknown, f"parameters without a type (papermill shows 'Unknown type'): {unknown}"


if __name__ == "__main__" and "--write" in sys.argv:
    write_parameters_cells()
