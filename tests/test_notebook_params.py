"""The notebooks' `parameters` cells stay in step with the config dataclasses (no kernel needed)."""
from __future__ import annotations

import ast
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from clipdg_nb.config import FinetuneConfig, ZeroShotConfig, from_params, tuned_lists
from clipdg_nb.data import VALIDATION_SPLITS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = ["01_zero_shot", "02_few_shot_sweep", "03_swa_ablation", "04_analysis", "05_model_soups"]
NOTEBOOK_ONLY = {"force": False}  # extra parameters a notebook may add beside its dataclass's
from clipdg_nb.notebook_kernel import UnknownParameterError, check_injected  # noqa: E402

sys.path.insert(0, str(NOTEBOOKS.parent / "tools"))
# the generator: a script of the repository (`python tools/parameter_cells.py --write`)
from parameter_cells import GENERATED, render_parameters, write_parameters_cells  # noqa: E402


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
    params, expected = parameters(name), {**defaults(cls), **GENERATED[name].get("overrides", {})}
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
    assert params["experiment"] is None  # the only experiment with runs, else a list (analysis.find_experiment)
    assert params["output_dir"] == ZeroShotConfig.output_dir
    assert 0 < params["level"] < 1


def test_training_notebooks_default_to_the_demo_sizes_in_folders_of_their_own():
    """Hand runs: the demo's sizes (the tiny default model), said atop the cell with the paper's; 03 and 05
    keep their runs apart from 02's (05 needs kept weights; 04 reads 05's folder as its soups_output_dir)."""
    from clipdg_nb.config import PAPER_SIZES, sizes_note

    demo = yaml.safe_load((NOTEBOOKS.parent / "parameters" / "demo.yaml").read_text())
    sweep = next(s for s in demo["stages"] if s["name"] == "sweep")["params"]
    folders = {}
    for name in ("02_few_shot_sweep", "03_swa_ablation", "05_model_soups"):
        params = parameters(name)
        assert {k: params[k] for k in PAPER_SIZES} == {k: sweep[k] for k in PAPER_SIZES} != PAPER_SIZES
        cell = next(c for c in nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        assert cell.source.splitlines()[0] == "# " + sizes_note(FinetuneConfig)
        folders[name] = (params["output_dir"], params["experiment"])
    assert "-p epochs 20 -p batch_size 128" in sizes_note(FinetuneConfig) and "paper's sizes" in sizes_note(
        FinetuneConfig(**PAPER_SIZES))
    assert len(set(folders.values())) == 3
    assert folders["05_model_soups"][0] == parameters("04_analysis")["soups_output_dir"]


def test_finetune_configs_expand_methods_and_lrs():
    from clipdg_nb.config import sweep_configs as finetune_configs

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


def _papermill_history(injected: str, name="02_few_shot_sweep"):
    """IPython's `In` as papermill leaves it at the first cell after the parameters: '', the
    parameters cell, papermill's injected cell (its own translator's text), the cell running now."""
    from papermill.translators import PythonTranslator

    return ["", render_parameters(**GENERATED[name]), PythonTranslator.codify(injected), "cfg = ..."]


def test_an_unknown_injected_parameter_stops_with_a_did_you_mean():
    from clipdg_nb.config import from_namespace

    ns = {"In": _papermill_history({"datset": "iwildcam", "seed": 1}), "datset": "iwildcam", "seed": 1}
    with pytest.raises(UnknownParameterError, match=r"unknown parameter 'datset' \(did you mean 'dataset'\?\)"):
        check_injected(ns)
    with pytest.raises(UnknownParameterError, match="nothing was run"):  # the notebooks' boundary checks it
        from_namespace(FinetuneConfig, ns)
    with pytest.raises(UnknownParameterError, match=r"'zzz'(?! \(did)"):  # nothing close: no guess
        check_injected({"In": _papermill_history({"zzz": 1})})
    # declared names pass; so does JupyterLab (no injected cell) and a plain dict (validation, tests)
    check_injected({"In": _papermill_history({"dataset": "iwildcam", "methods": ["linear_probe"], "force": True})})
    check_injected({"In": ["", render_parameters(**GENERATED["01_zero_shot"]), "cfg = ..."], "datset": "x"})
    check_injected({"datset": "iwildcam"})
    # a notebook whose cells before were not papermill's (a user's own cell starting with "# Parameters")
    check_injected({"In": ["", "import os", "# Parameters\nx = 1\n", "cfg = ..."]})


def test_a_list_passed_as_text_says_to_use_yaml():
    ns = {"In": _papermill_history({"methods": "['linear_probe']"}), "methods": "['linear_probe']"}
    with pytest.raises(UnknownParameterError, match=r'is text, not a list.*-y "methods: \[linear_probe\]"'):
        check_injected(ns)
    from clipdg_nb.config import sweep_configs

    with pytest.raises(UnknownParameterError, match=r'-y "methods: \[linear_probe\]"'):  # 02's first call says it
        sweep_configs(ns, ns["methods"], [1e-4])
    ns = {"In": _papermill_history({"lrs": "0.001"}), "lrs": "0.001"}
    with pytest.raises(UnknownParameterError, match=r'-y "lrs: \[0.001\]"'):
        check_injected(ns)


@pytest.mark.parametrize("name", ALL)
def test_help_of_every_list_parameter_says_how_to_pass_a_list(name):
    inspected = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    lists = {k: info["help"] for k, info in inspected.items() if info["inferred_type_name"] == "list"}
    assert lists, f"{name}: no list parameter?"
    lacking = [k for k, text in lists.items() if f'-y "{k}: [' not in text]
    assert not lacking, f"{name}: say in the help of {lacking} how to pass a list (papermill -y)"


if __name__ == "__main__" and "--write" in sys.argv:
    write_parameters_cells()
