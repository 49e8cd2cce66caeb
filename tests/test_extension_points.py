"""The four extension probes of issue 27, each one entry in one place: a method that trains only some
parameters (BitFit: `config.METHODS`), a dataset without id_val (`data.DATASETS`), a calibration
figure (Brier score: `evaluate.CALIBRATION`), a new config field (`config.IDENTITY_AT_DEFAULT` rule)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from clipdg_nb import config, data, evaluate
from clipdg_nb.analysis import weight_averaging as wa
from clipdg_nb.config import METHODS, FinetuneConfig
from clipdg_nb.models import ClipClassifier, load_clip
from clipdg_nb.models.partial import TRAINABLE
from clipdg_nb.train import make_optimizer


# -- a method that says which parameters train: BitFit --------------------------------------------

def test_bitfit_moves_only_the_biases_and_the_head():
    spec = METHODS["bitfit"]
    cfg = FinetuneConfig(method="bitfit", pretrained=None, lr=1e-2).validate()
    torch.manual_seed(0)
    bundle = load_clip("clipdg-tiny-vit", None, device="cpu")
    model = ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, ["a", "b", "c"], [str], text_mode=spec.text_mode)
    TRAINABLE[spec.trainable](model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(cfg, model.parameters())
    x, y = torch.randn(8, 3, *bundle.model.visual.image_size), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    biases_and_head = {n for n in before if n.startswith("head.") or n.endswith("bias")}
    assert changed == biases_and_head  # every bias and the head moved; nothing else did
    assert {"head.weight", "head.bias", "visual.transformer.resblocks.0.attn.in_proj_bias"} <= changed
    assert "visual.conv1.weight" in before and "visual.transformer.resblocks.0.attn.in_proj_weight" in before
    assert "train_blocks" not in cfg.identity() and cfg.identity()["method"] == "bitfit"


# -- a config field at its default never changes a run id ----------------------------------------

def test_a_new_field_at_its_default_leaves_every_identity_unchanged(monkeypatch):
    @dataclasses.dataclass
    class WithAveragingSwitch(FinetuneConfig):
        averaging_variant: str = "swa"  # a throwaway field, e.g. switching an averaging variant

    for method in config.TRAINED_METHODS:  # read by every method (as a field of TRAINING_FIELDS would be)
        spec = METHODS[method]
        monkeypatch.setitem(METHODS, method, dataclasses.replace(spec, reads=spec.reads + ("averaging_variant",)))
        old, new = FinetuneConfig(method=method).validate(), WithAveragingSwitch(method=method).validate()
        assert new.identity() == old.identity()
        assert WithAveragingSwitch(method=method, averaging_variant="ema").validate().identity() == \
            {**old.identity(), "averaging_variant": "ema"}


# -- a dataset without id_val: its spec holds its split defaults ---------------------------------

def test_a_dataset_without_id_val_declares_its_selection_split_and_validation_reads_it(monkeypatch):
    from clipdg_nb.data.spec import SpecError
    from clipdg_nb.pipeline.validate import VALIDATORS

    splits = ("train", "val", "test", "id_test")  # RxRx1's: no id_val
    with pytest.raises(SpecError, match="'rxrx1': select_split='id_val' must be a validation split it has"):
        dataclasses.replace(data.DATASETS["camelyon17"], name="rxrx1", splits=splits)  # the default, id_val
    spec = dataclasses.replace(data.DATASETS["camelyon17"], name="rxrx1", splits=splits, select_split="val")
    monkeypatch.setitem(data.DATASETS, "rxrx1", spec)
    with pytest.raises(ValueError, match=r"select_split='id_val': .* of 'rxrx1' \(\['val'\]\).* select_split='val'"):
        FinetuneConfig(dataset="rxrx1").validate()  # up front, not in training
    for notebook in ("03_swa_ablation.ipynb", "04_analysis.ipynb"):  # the experiment file's check says the same
        with pytest.raises(ValueError, match="select_split='id_val'"):
            VALIDATORS[notebook].check({"dataset": "rxrx1", "select_split": "id_val", "experiment": "x",
                                        "id_split": "id_test", "ood_split": "test", "level": 0.95})
    cfg = FinetuneConfig(dataset="rxrx1", select_split="val").validate()
    assert cfg.eval_splits == ("val", "test", "id_test") == spec.eval_splits  # its own evaluation splits


@pytest.mark.skipif(int(pd.__version__.split(".")[0]) < 3, reason="the loader runs on pandas < 3")
def test_rxrx1s_loader_on_pandas_3_is_named_a_library_incompatibility_not_bad_metadata(tmp_path, monkeypatch):
    from wilds.datasets.rxrx1_dataset import RxRx1Dataset

    from clipdg_nb.data import checks, wilds_compat

    folder = tmp_path / "rxrx1_v1.0"
    folder.mkdir()
    (folder / "RELEASE_v1.0.txt").write_text("")
    rows = [("HEPG2", "train", "HEPG2-01", 1, 0), ("HEPG2", "train", "HEPG2-01", 2, 1),
            ("HUVEC", "test", "HUVEC-01", 1, 0), ("HUVEC", "val", "HUVEC-02", 2, 1)]
    pd.DataFrame([{"cell_type": c, "dataset": d, "experiment": e, "plate": 1, "well": "B02", "site": s, "sirna_id": y}
                  for c, d, e, s, y in rows]).to_csv(folder / "metadata.csv", index=False)  # a valid metadata file
    spec = dataclasses.replace(data.DATASETS["camelyon17"], name="rxrx1", version="1.0", loader="RxRx1Dataset",
                               splits=("train", "val", "test", "id_test"), select_split="val",
                               required_columns={"metadata.csv": ("dataset", "site", "experiment", "sirna_id")})
    monkeypatch.setitem(data.DATASETS, "rxrx1", spec)
    monkeypatch.setattr(wilds_compat, "RxRx1Dataset", RxRx1Dataset, raising=False)
    with pytest.raises(checks.LoaderIncompatibleError) as caught:
        data.load_dataset("rxrx1", tmp_path)
    message = str(caught.value)
    assert f"pandas {pd.__version__}" in message and "Copy-on-Write" in message and "rxrx1_dataset.py" in message
    assert "not a problem of" in message and "fresh download" not in message  # the files are not blamed


# -- a calibration figure: the Brier score --------------------------------------------------------

def test_brier_score_is_one_registry_entry_recorded_everywhere():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    hand = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.7 ** 2 + 0.6 ** 2)) / 2  # 0.14 and 0.86
    assert evaluate.brier_score(probs.log(), y) == pytest.approx(hand, abs=1e-12)
    assert evaluate.CALIBRATION["brier"].of_logits(probs.log() + 3.0, y) == pytest.approx(0.5, abs=1e-12)
    record = evaluate.calibration_record({"best": {"id_val": 2 * probs.log(), "test": probs.log()}},
                                         {"id_val": y, "test": y}, "id_val")
    assert {"brier", "brier_ts"} <= set(record["best"]["test"]) and record["best"]["test"]["brier"] == pytest.approx(hand)
    assert {"brier", "brier_ts"} <= set(wa.CALIBRATION_FIELDS)  # what 04, 05 and the tables show


def test_a_record_made_before_a_figure_gets_it_from_its_predictions_or_names_it(tmp_path):
    from clipdg_nb.runs import Run

    old = {"ece": 0.1, "ece_ts": 0.05, "nll_ts": 0.4, "temperature": 1.5, "temperature_split": "id_val"}  # no nll, brier
    record = {"run_id": "r1", "experiment": "exp", "dataset": "fmow", "method": "finetune", "fraction": 1.0, "seed": 0,
              "lr": 1e-4, "params": {"output_dir": str(tmp_path)}, "selection": {"variant": "best"},
              "calibration": {"best": {"test": old}}}
    path = Run.of_record(record).prediction_path("test")
    path.parent.mkdir(parents=True)
    pd.DataFrame({"idx": [0, 1], "y_true": [0, 1], "y_pred": [0, 2], "p_true": [0.7, 0.3]}).to_parquet(path)
    with pytest.warns(UserWarning, match=r"r1 \(brier, brier_ts\); rerun"):
        rows = wa.calibration_rows([record])
    assert rows["nll"].iloc[0] == pytest.approx(-(np.log(0.7) + np.log(0.3)) / 2)  # computed from p_true
    assert np.isnan(rows["brier"].iloc[0]) and rows["ece"].iloc[0] == 0.1


def test_the_downloads_hold_the_registered_figures():
    from clipdg_nb.analysis.summary import results_tables

    cal = {"test": {"ece": 0.1, "nll": 0.5, "brier": 0.3, "ece_ts": 0.05, "nll_ts": 0.4, "brier_ts": 0.25,
                    "temperature": 1.5, "temperature_split": "id_val"}}
    record = {"run_id": "r1", "experiment": "exp", "dataset": "fmow", "method": "finetune", "fraction": 1.0, "seed": 0,
              "lr": 1e-4, "params": {"epochs": 4}, "selection": {"variant": "best"},
              "metrics": {"test": {"acc_avg": 0.7}}, "calibration": {"best": cal}}
    tables = results_tables([record], ["exp/r1"])
    row = tables["calibration"].iloc[0]
    assert {q: row[q] for q in wa.CALIBRATION_FIELDS} == {q: cal["test"][q] for q in wa.CALIBRATION_FIELDS}
    assert tables["metrics"].set_index("metric").loc["acc_avg", "value"] == 0.7 and tables["runs"]["epochs"].tolist() == [4]
