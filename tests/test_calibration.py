"""Calibration checked by hand, against torchmetrics and torch, and in a run's record."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipdg_nb import methods
from clipdg_nb.config import FinetuneConfig
from clipdg_nb.evaluate import (calibration_metrics, calibration_record, expected_calibration_error, fit_temperature,
                                negative_log_likelihood, temperature_split)
from clipdg_nb.runs import Run


def bins_ece(bins) -> float:
    """The ECE of `reliability_bins`: sum over bins of count / N * |accuracy - confidence|."""
    filled = bins[bins["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())


def test_ece_equals_a_hand_computation():
    # top-1 confidences: 0.9, 0.9 (bin 13, one right), 0.7 (bin 10, right), 0.62, 0.64 (bin 9, both right)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.62, 0.38], [0.36, 0.64]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    hand = 2 / 5 * abs(0.5 - 0.9) + 1 / 5 * abs(1 - 0.7) + 2 / 5 * abs(1 - 0.63)
    assert expected_calibration_error(probs, y) == pytest.approx(hand, abs=1e-12)
    assert expected_calibration_error(probs, y, kind="probs") == pytest.approx(hand, abs=1e-12)
    # logits are softmaxed: log-probabilities give the same number
    assert expected_calibration_error(probs.log(), y) == pytest.approx(hand, abs=1e-12)
    # one bin: |accuracy - mean confidence|
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(abs(4 / 5 - (0.9 + 0.9 + 0.7 + 0.62 + 0.64) / 5))


def test_ece_bins_are_closed_on_the_right_as_guo_et_al():
    """A confidence of exactly 1.0 is in the last bin ((14/15, 1]); torchmetrics gives it a bin of its own."""
    from torchmetrics.classification import MulticlassCalibrationError
    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    y = torch.tensor([1, 0])  # the certain one is wrong, the 0.95 one right
    assert expected_calibration_error(probs, y) == pytest.approx(abs(0.5 - 0.975))
    theirs = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")(probs, y)
    assert float(theirs) == pytest.approx(0.5 * 1.0 + 0.5 * 0.05)  # the documented difference


@pytest.mark.parametrize("seed,n_classes,scale", [(0, 2, 1.0), (1, 10, 3.0), (2, 62, 5.0), (3, 182, 0.5)])
def test_ece_equals_torchmetrics(seed, n_classes, scale):
    from torchmetrics.classification import MulticlassCalibrationError
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(2000, n_classes, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (2000,), generator=g)
    y[:1000] = logits[:1000].argmax(1)  # half right, so the bins hold both outcomes
    probs = logits.softmax(1)
    conf = probs.max(1).values * 15
    assert (conf - conf.round()).abs().min() > 1e-9  # no confidence on a bin edge, where conventions differ
    theirs = float(MulticlassCalibrationError(num_classes=n_classes, n_bins=15, norm="l1")(probs, y))
    ours = expected_calibration_error(logits, y)
    assert ours == pytest.approx(theirs, abs=1e-5)  # torchmetrics sums in float32 (seen: 1e-6 apart)
    assert ours == pytest.approx(expected_calibration_error(probs, y), abs=1e-12)
    assert 0.01 < ours < 1  # a number worth comparing


@pytest.mark.parametrize("seed", [0, 1])
def test_nll_equals_torch_cross_entropy(seed):
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(500, 7, generator=g)
    y = torch.randint(0, 7, (500,), generator=g)
    assert negative_log_likelihood(logits, y) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert negative_log_likelihood(logits.numpy(), y.numpy()) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def _calibrated(n=20000, n_classes=10, seed=0):
    """Logits of a perfectly calibrated model: labels drawn from softmax(logits)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, n_classes, generator=g, dtype=torch.float64)
    y = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, y


@pytest.mark.parametrize("factor", [3.0, 0.4])
def test_temperature_recovers_a_known_temperature(factor):
    logits, y = _calibrated()
    t = fit_temperature(factor * logits, y)
    assert t == pytest.approx(factor, rel=0.05)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.05)
    # an independent minimiser: the NLL on a fine grid of temperatures is nowhere below the fitted one
    grid = np.exp(np.linspace(np.log(t) - 0.2, np.log(t) + 0.2, 81))
    at_t = negative_log_likelihood(factor * logits / t, y)
    assert min(negative_log_likelihood(factor * logits / s, y) for s in grid) >= at_t - 1e-9


@pytest.mark.filterwarnings("ignore:fitted temperature")  # some of these models are no better than chance
@pytest.mark.parametrize("seed", range(6))
def test_temperature_never_raises_the_fitted_splits_nll(seed):
    g = torch.Generator().manual_seed(seed)
    n_classes = [2, 5, 62][seed % 3]
    logits = (0.1 + 5 * torch.rand(1, generator=g)) * torch.randn(300, n_classes, generator=g)
    y = torch.randint(0, n_classes, (300,), generator=g)
    y[: 50 * (seed % 4)] = logits[: 50 * (seed % 4)].argmax(1)
    t = fit_temperature(logits, y)
    assert t > 0
    assert negative_log_likelihood(logits / t, y) <= negative_log_likelihood(logits, y) + 1e-12


@pytest.mark.filterwarnings("error:fitted temperature")
def test_temperature_at_a_bound_warns():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    with pytest.warns(UserWarning, match="bound"):
        t = fit_temperature(logits, torch.tensor([0, 1]))  # all right: NLL falls as T -> 0
    assert t == pytest.approx(1e-2, rel=1e-3)
    assert fit_temperature(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])) == 1.0  # T changes nothing: no warning


def test_calibration_metrics_fit_once_and_apply_everywhere():
    logits, y = _calibrated(n=4000, seed=1)
    shifted, y_shift = _calibrated(n=3000, seed=2)
    out = calibration_metrics({"id_val": 3 * logits, "test": 5 * shifted}, {"id_val": y, "test": y_shift})
    t = fit_temperature(3 * logits, y)
    assert set(out) == {"id_val", "test"}
    for split, z, labels in (("id_val", 3 * logits, y), ("test", 5 * shifted, y_shift)):
        row = out[split]
        assert set(row) == {"ece", "nll", "brier", "ece_ts", "nll_ts", "brier_ts", "temperature", "temperature_split"}
        assert row["temperature"] == t and row["temperature_split"] == "id_val"
        assert row["nll"] == pytest.approx(float(F.cross_entropy(z, labels)))
        assert row["nll_ts"] == pytest.approx(float(F.cross_entropy(z / t, labels)))
        assert row["ece_ts"] == pytest.approx(expected_calibration_error(z / t, labels))
        assert row["ece_ts"] < row["ece"]  # both over-confident: cooling helps
    assert out["test"]["ece_ts"] > out["id_val"]["ece_ts"]  # under shift T from id_val undercorrects
    none = calibration_metrics({"test": logits}, {"test": y}, fit_split=None)["test"]
    assert none["ece_ts"] is None and none["temperature"] is None and none["nll"] == pytest.approx(
        negative_log_likelihood(logits, y))


@pytest.mark.parametrize("call,match", [
    (lambda: expected_calibration_error(torch.zeros(3, 2), torch.tensor([0, 1])), "3 rows"),
    (lambda: expected_calibration_error(torch.zeros(2, 2), torch.tensor([0, 2])), "outside"),
    (lambda: expected_calibration_error(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])), "NaN"),
    (lambda: expected_calibration_error(torch.zeros(0, 2), torch.tensor([], dtype=torch.long)), "non-empty"),
    (lambda: expected_calibration_error(torch.zeros(2, 2), torch.tensor([0, 1]), n_bins=0), "n_bins"),
    (lambda: expected_calibration_error(torch.ones(2, 2), torch.tensor([0, 1]), kind="probs"), "sum 1"),
    (lambda: calibration_metrics({"test": torch.zeros(2, 2)}, {"test": [0, 1]}), "fit_split"),
    (lambda: calibration_metrics({"test": torch.zeros(2, 2)}, {"val": [0, 1]}, fit_split=None), "same splits"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_temperature_split_is_never_a_test_split():
    assert temperature_split(["id_val", "val", "test"], "val") == "id_val"
    assert temperature_split(["val", "test"], "val") == "val"
    assert temperature_split(["id_test", "test"], "id_val") is None
    assert temperature_split(["test"], "test") is None  # even if asked
    logits, y = _calibrated(n=500)
    record = calibration_record({"best": {"test": logits}, "last": {"val": logits, "test": logits}},
                                {"test": y, "val": y}, "val")
    assert record["best"]["test"]["temperature"] is None
    assert record["last"]["test"]["temperature_split"] == "val"


def _hand_ece(p_top1, correct, n_bins=15):
    """ECE from a predictions table, by a plain loop over the bins ((b-1)/M, b/M]."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (p_top1 > lo) & (p_top1 <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - p_top1[inside].mean())
    return total


@pytest.mark.parametrize("select_split,eval_splits", [("id_val", ("id_val", "id_test", "val", "test")),
                                                       ("val", ("val", "test"))])
def test_run_record_holds_calibration_of_its_saved_predictions(easy_root, run_kwargs, select_split, eval_splits):
    cfg = FinetuneConfig(root_dir=str(easy_root), method="linear_probe", select_split=select_split,
                         eval_splits=eval_splits, **run_kwargs)
    record = methods.run(cfg)
    calib = record["calibration"]
    assert set(calib) == {"best"} and set(calib["best"]) == set(eval_splits)
    for split in eval_splits:
        row, preds = calib["best"][split], Run.of(cfg).predictions(split)
        correct = (preds["y_pred"] == preds["y_true"]).to_numpy(dtype=float)
        # independent of the logits: the saved probabilities (float32 softmax) give the same numbers
        assert row["nll"] == pytest.approx(-np.log(preds["p_true"].to_numpy()).mean(), rel=1e-4)
        assert row["ece"] == pytest.approx(_hand_ece(preds["p_top1"].to_numpy(), correct), abs=1e-4)
        assert row["temperature_split"] == select_split and row["temperature"] > 0
    fitted = calib["best"][select_split]
    assert fitted["nll_ts"] <= fitted["nll"] + 1e-12
    assert not set(fitted) & set(record["metrics"][select_split])  # no clash with WILDS's names


def test_ties_give_one_predicted_class_to_metrics_predictions_and_ece(iwildcam):
    """Identical prompts make identical logit columns; every number then reads the same class per
    row (the lowest of the tied ones): the metrics, the saved predictions, the ECE of the record,
    the ECE and reliability bins of the saved predictions, and torchmetrics' ECE."""
    from torchmetrics.classification import MulticlassCalibrationError

    from clipdg_nb.analysis.weight_averaging import reliability_bins
    from clipdg_nb.data import split_indices
    from clipdg_nb.evaluate import evaluate_logits
    idx = split_indices(iwildcam, "id_test")
    y = torch.as_tensor(np.asarray(iwildcam.y_array)[idx])
    n, g = len(idx), torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(n, 182, generator=g)
    # on 80 % of the rows the true class ties with another at the top, lower or higher than it
    partner = (y + 1 + torch.randint(0, 181, (n,), generator=g)) % 182
    rows = torch.nonzero(torch.rand(n, generator=g) < 0.8).squeeze(1)
    top = logits.max(1).values + 3 * torch.rand(n, generator=g)
    logits[rows, y[rows]] = logits[rows, partner[rows]] = top[rows]
    metrics, frame = evaluate_logits(iwildcam, idx, logits, "id_test")
    tied_pred = torch.minimum(y, partner)[rows].numpy()
    assert (frame["y_pred"].to_numpy()[rows.numpy()] == tied_pred).all()  # the lowest class index
    assert all(labels[0] == pred for labels, pred in zip(frame["topk_labels"], frame["y_pred"]))
    assert metrics["acc_avg"] == pytest.approx((frame["y_pred"] == frame["y_true"]).mean())
    ece = calibration_metrics({"id_test": logits}, {"id_test": y}, fit_split=None)["id_test"]["ece"]
    conf = frame["p_top1"].to_numpy()
    assert np.abs(conf * 15 - np.round(conf * 15)).min() > 1e-5  # no confidence on a bin edge
    saved = _hand_ece(conf, (frame["y_pred"] == frame["y_true"]).to_numpy(dtype=float))
    assert ece == pytest.approx(saved, abs=1e-5)
    assert bins_ece(reliability_bins(frame)) == pytest.approx(ece, abs=1e-5)
    theirs = float(MulticlassCalibrationError(num_classes=182, n_bins=15, norm="l1")(logits.double().softmax(1), y))
    assert ece == pytest.approx(theirs, abs=1e-5)
    assert 0.05 < ece < 1
