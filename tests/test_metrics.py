"""Our metric path gives exactly WILDS's own numbers and names (checked against the unmodified classes)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import sklearn.metrics
import torch

from clipdg_nb.data import split_indices
from clipdg_nb.analysis.tables import group_accuracy
from clipdg_nb.evaluate import prediction_frame, wilds_metrics


@pytest.fixture
def reference_torch_scatter(monkeypatch):
    """A slow, obviously-correct stand-in for torch_scatter.scatter(reduce='mean'), test-only."""
    def scatter(src, index, dim_size, reduce):
        assert reduce == "mean"
        out = torch.zeros(dim_size)
        for g in range(dim_size):
            members = [float(v) for v, i in zip(src.tolist(), index.tolist()) if i == g]
            out[g] = sum(members) / len(members) if members else 0.0
        return out
    monkeypatch.setitem(sys.modules, "torch_scatter", types.SimpleNamespace(scatter=scatter))


@pytest.mark.parametrize("split", ["id_test", "val", "test"])
def test_fmow_metrics_equal_unmodified_wilds_eval(fmow, reference_torch_scatter, split):
    from wilds.datasets.fmow_dataset import FMoWDataset
    idx = split_indices(fmow, split)
    y = np.asarray(fmow.y_array)[idx]
    rng = np.random.default_rng(0)
    y_pred = np.where(rng.random(len(idx)) < 0.5, y, rng.integers(0, 62, len(idx)))
    ours = wilds_metrics(fmow, idx, y_pred)
    ref, _ = FMoWDataset.eval(fmow, torch.as_tensor(y_pred), torch.as_tensor(y), fmow.metadata_array[idx])
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k] == pytest.approx(float(ref[k]), abs=1e-7), k
    assert {"acc_avg", "acc_worst_region", "acc_worst_year"} <= set(ours)


def test_fmow_worst_region_by_hand(fmow):
    idx = split_indices(fmow, "test")
    y = np.asarray(fmow.y_array)[idx]
    rng = np.random.default_rng(1)
    y_pred = np.where(rng.random(len(idx)) < 0.6, y, -1)
    region = np.asarray(fmow.metadata_array[idx, 0])
    names = fmow.metadata_map["region"]
    accs = [np.mean(y_pred[region == r] == y[region == r]) for r in np.unique(region) if names[r] != "Other"]
    ours = wilds_metrics(fmow, idx, y_pred)
    assert ours["acc_worst_region"] == pytest.approx(min(accs))
    assert ours["acc_avg"] == pytest.approx(np.mean(y_pred == y))


def test_fmow_eval_does_not_need_torch_scatter(fmow, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_scatter", None)  # import torch_scatter now raises
    idx = split_indices(fmow, "test")
    wilds_metrics(fmow, idx, np.zeros(len(idx), dtype=int))


def test_iwildcam_metrics_equal_wilds_and_sklearn(iwildcam):
    idx = split_indices(iwildcam, "test")
    y = np.asarray(iwildcam.y_array)[idx]
    rng = np.random.default_rng(2)
    y_pred = np.where(rng.random(len(idx)) < 0.5, y, rng.integers(0, 182, len(idx)))
    ours = wilds_metrics(iwildcam, idx, y_pred)
    ref, _ = iwildcam.eval(torch.as_tensor(y_pred), torch.as_tensor(y), iwildcam.metadata_array[idx])
    assert ours == pytest.approx({k: float(v) for k, v in ref.items()})
    # WILDS macro-averages over the labels present in y_true only
    labels = np.unique(y)
    assert ours["F1-macro_all"] == pytest.approx(sklearn.metrics.f1_score(y, y_pred, average="macro", labels=labels))
    assert ours["recall-macro_all"] == pytest.approx(sklearn.metrics.recall_score(y, y_pred, average="macro", labels=labels))
    assert ours["acc_avg"] == pytest.approx(np.mean(y == y_pred))


@pytest.mark.parametrize("split", ["id_val", "val", "test"])
def test_camelyon17_metrics_equal_unmodified_wilds_eval(camelyon17, reference_torch_scatter, split):
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
    idx = split_indices(camelyon17, split)
    y = np.asarray(camelyon17.y_array)[idx]
    rng = np.random.default_rng(3)
    y_pred = np.where(rng.random(len(idx)) < 0.7, y, 1 - y)
    ours = wilds_metrics(camelyon17, idx, y_pred)
    ref, _ = Camelyon17Dataset.eval(camelyon17, torch.as_tensor(y_pred), torch.as_tensor(y),
                                    camelyon17.metadata_array[idx])
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k] == pytest.approx(float(ref[k]), abs=1e-7), k
    # by hand: accuracy over the split, and the worst slide among the slides the split holds
    slide = np.asarray(camelyon17.metadata_array[idx, 1])
    assert ours["acc_avg"] == pytest.approx(np.mean(y_pred == y))
    assert ours["acc_wg"] == pytest.approx(min(np.mean(y_pred[slide == s] == y[slide == s]) for s in np.unique(slide)))


def test_camelyon17_eval_does_not_need_torch_scatter(camelyon17, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_scatter", None)  # import torch_scatter now raises
    idx = split_indices(camelyon17, "test")
    assert set(wilds_metrics(camelyon17, idx, np.zeros(len(idx), dtype=int))) >= {"acc_avg", "acc_wg"}


def test_group_accuracy_counts_accuracy_and_natural_order(fmow, iwildcam):
    idx = split_indices(fmow, "id_test")
    y = np.asarray(fmow.y_array)[idx]
    logits = torch.nn.functional.one_hot(torch.as_tensor(y), 62).float()  # perfect predictions
    table = group_accuracy(prediction_frame(fmow, idx, logits, "id_test"))
    assert set(table["field"]) == {"region", "year"}
    for field, part in table.groupby("field"):
        assert part["n"].sum() == len(idx)
    assert (table["value"] == 1.0).all()
    # iWildCam locations are numbers: 2 sorts before 10, not after it as text would
    idx = split_indices(iwildcam, "train")
    wrong = torch.zeros(len(idx), 182)
    table = group_accuracy(prediction_frame(iwildcam, idx, wrong, "train"))
    groups = table["group"].astype(int).tolist()
    assert groups == sorted(groups) and len(groups) > 2
    frame = prediction_frame(iwildcam, idx, wrong, "train")
    for row in table.itertuples():  # by hand, group by group
        members = [k for k in range(len(frame)) if frame["location"][k] == row.group]
        assert row.n == len(members)
        assert row.value == pytest.approx(np.mean([frame["y_pred"][k] == frame["y_true"][k] for k in members]))


def test_top_classes_break_ties_toward_the_lowest_class(iwildcam):
    from clipdg_nb.evaluate import top_classes
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 5.0, 5.0, 1.0]])
    assert top_classes(scores, 3).tolist() == [[1, 2, 4], [0, 1, 2], [0, 2, 3]]
    assert top_classes(scores.softmax(1)).tolist() == [[1], [0], [0]]
    # iWildCam's classes 3 and 148 share a name: identical logits, the prediction is always 3
    idx = split_indices(iwildcam, "train")
    logits = torch.randn(len(idx), 182, generator=torch.Generator().manual_seed(0))
    logits[:, 3] = logits[:, 148] = 10.0
    frame = prediction_frame(iwildcam, idx, logits, "train")
    assert (frame["y_pred"] == 3).all()
    assert all(list(labels[:2]) == [3, 148] for labels in frame["topk_labels"])
