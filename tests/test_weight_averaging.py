"""The weight-averaging comparison and calibration tables of 04, checked against hand computations
and the package's own independent pieces (stats.paired_comparison, evaluate.expected_calibration_error);
the kept-weights disk estimate against a file a run kept."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from clipdg_nb import runs
from clipdg_nb.analysis import fit_trend, stats
from clipdg_nb.analysis import weight_averaging as wa
from clipdg_nb.analysis.figures import averaging_gains, reliability_diagram
from clipdg_nb.evaluate import expected_calibration_error

SPLITS = ("id_val", "id_test", "test")
# FMoW headline metrics: acc_avg on ID splits, acc_worst_region on OOD test
METRIC = {"id_val": "acc_avg", "id_test": "acc_avg", "test": "acc_worst_region"}


def bins_ece(bins) -> float:
    """The ECE of `reliability_bins`: sum over bins of count / N * |accuracy - confidence|."""
    filled = bins[bins["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())


def _values(seed, lr, variant):
    """Hand-picked metric values: distinct per (seed, lr, variant, split), so a wrong pairing shows."""
    base = {3e-4: 0.60, 1e-3: 0.50}[lr] + 0.01 * seed + {"best": 0.0, "last": -0.02 - 0.003 * seed * seed, "swa": 0.013 * (seed + 1)}[variant]
    return {split: {METRIC[split]: base + 0.1 * i - 0.002 * seed * i} for i, split in enumerate(SPLITS)}


def _run(seed, lr):
    variants = {v: _values(seed, lr, v) for v in ("best", "last", "swa")}
    return {"run_id": f"fmow-finetune-f0.5-lr{lr:g}-s{seed}-x", "experiment": "e", "dataset": "fmow",
            "method": "finetune", "fraction": 0.5, "seed": seed, "lr": lr, "identity": {"lr": lr, "seed": seed},
            "selection": {"variant": "best"}, "metrics": variants["best"], "variants": variants}


def _soup(seed):
    variants = {"uniform_soup": {s: {METRIC[s]: 0.55 + 0.03 * seed + 0.1 * i} for i, s in enumerate(SPLITS)},
                "greedy_soup": {s: {METRIC[s]: 0.63 + 0.011 * seed * seed + 0.1 * i} for i, s in enumerate(SPLITS)}}
    return {"run_id": f"soup-s{seed}", "experiment": "e", "dataset": "fmow", "method": "finetune", "fraction": 0.5,
            "seed": seed, "lr": None, "kind": "soup", "identity": {"ingredients": {f"r{seed}": None}},
            "selection": {"variant": "greedy_soup"}, "metrics": variants["greedy_soup"], "variants": variants}


@pytest.fixture
def frames():
    records = [_run(seed, lr) for seed in (0, 1, 2) for lr in (1e-3, 3e-4)]
    soups = [_soup(seed) for seed in (0, 1, 2)]
    return runs.split_settings(runs.tidy(records)), runs.tidy(soups).assign(setting="")


def _by_seed(variant, split, lr=3e-4):
    if variant in wa.SOUPS:
        return pd.Series({s: _soup(s)["variants"][variant][split][METRIC[split]] for s in (0, 1, 2)})
    return pd.Series({s: _values(s, lr, variant)[split][METRIC[split]] for s in (0, 1, 2)})


def test_comparison_pairs_each_variant_with_the_best_single_run_by_seed(frames):
    runs_df, soups_df = frames
    table = wa.averaging_comparison(runs_df, soups_df, ("id_test", "test"), level=0.9)
    assert list(wa.variant_order(table["variant"].unique())) == ["best", "last", "swa", "uniform_soup", "greedy_soup"]
    for split in ("id_test", "test"):
        base = _by_seed("best", split)  # lr 3e-4: the better mean on id_val
        for variant in ("last", "swa", "uniform_soup", "greedy_soup"):
            row = table[(table["variant"] == variant) & (table["split"] == split)].iloc[0]
            ref = stats.paired_comparison(_by_seed(variant, split), base, level=0.9)
            assert (row["diff"], row["diff_low"], row["diff_high"], row["n_paired"]) == pytest.approx(
                (ref["mean_diff"], ref["low"], ref["high"], 3))
            own = stats.mean_ci(_by_seed(variant, split), level=0.9)
            assert (row["mean"], row["low"], row["high"], row["n"]) == pytest.approx((own["mean"], own["low"], own["high"], 3))
            assert row["metric"] == METRIC[split]
        best = table[(table["variant"] == "best") & (table["split"] == split)].iloc[0]
        assert np.isnan(best["diff"]) and best["mean"] == pytest.approx(base.mean())
    # the lr is chosen on id_val: with the other lr's runs better there, the best single run changes
    flipped = runs_df.assign(value=np.where((runs_df["lr"] == 1e-3) & (runs_df["split"] == "id_val"), 0.99, runs_df["value"]))
    best = wa.averaging_comparison(flipped, soups_df, ("id_test",))
    assert best.loc[best["variant"] == "best", "mean"].iloc[0] == pytest.approx(_by_seed("best", "id_test", 1e-3).mean())
    # nothing of the method: an empty frame with the columns, never an error
    assert wa.averaging_comparison(runs_df, soups_df, method="flyp").empty


def test_effective_robustness_of_each_variant_is_ood_minus_the_trend(frames):
    runs_df, soups_df = frames
    points = pd.DataFrame({"method": "vision_only", "id": [0.3, 0.5, 0.7], "ood": [0.2, 0.3, 0.5]})
    fit = fit_trend(points)
    table = wa.averaging_comparison(runs_df, soups_df, ("id_test", "test"), fit=fit)
    er = table[table["split"] == "effective_robustness"].set_index("variant")

    def hand(variant):  # OOD minus the trend's OOD at the variant's ID value, per seed
        x, y = _by_seed(variant, "id_test"), _by_seed(variant, "test")
        return y - stats.sigmoid(fit["slope"] * stats.logit(x) + fit["intercept"])
    for variant in ("best", "swa", "greedy_soup"):
        assert er.loc[variant, "mean"] == pytest.approx(hand(variant).mean())
    ref = stats.paired_comparison(hand("greedy_soup"), hand("best"))
    assert er.loc["greedy_soup", "diff"] == pytest.approx(ref["mean_diff"])
    assert er.loc["greedy_soup", "diff_low"] == pytest.approx(ref["low"])
    assert averaging_gains(table).data  # one figure, drawn
    assert wa.missing_variants(table) == ["ema", "wise_ft"]


def _predictions():
    #            bin (of 15)   right?
    # 0.05  ->   0              no
    # 0.30  ->   4 (0.2667, 0.3333]   yes
    # 0.31  ->   4              no
    # 0.80  ->   11 (0.7333, 0.8]     yes   (0.8 * 15 = 12 exactly: closed on the right, bin 11)
    # 0.95  ->   14             yes
    # 1.00  ->   14             no
    return pd.DataFrame({"p_top1": [0.05, 0.30, 0.31, 0.80, 0.95, 1.00],
                         "y_pred": [1, 2, 3, 4, 5, 6], "y_true": [0, 2, 0, 4, 5, 0]})


def test_reliability_bins_equal_a_hand_computation():
    preds = _predictions()
    bins = wa.reliability_bins(preds)
    assert len(bins) == 15 and bins["count"].sum() == 6
    filled = bins[bins["count"] > 0].set_index("bin")
    assert list(filled.index) == [0, 4, 11, 14]
    assert list(filled["count"]) == [1, 2, 1, 2]
    assert filled["confidence"].tolist() == pytest.approx([0.05, 0.305, 0.80, 0.975])
    assert filled["accuracy"].tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5])
    assert bins.loc[1, "low"] == pytest.approx(1 / 15) and bins.loc[1, "high"] == pytest.approx(2 / 15)
    assert np.isnan(bins.loc[1, "accuracy"])  # an empty bin has no accuracy
    hand = (1 * 0.05 + 2 * abs(0.5 - 0.305) + 1 * 0.2 + 2 * abs(0.5 - 0.975)) / 6
    assert bins_ece(bins) == pytest.approx(hand)
    # and the package's ECE of probability rows with these top-1 values and predictions
    n_classes = 40
    probs = torch.full((6, n_classes), 0.0, dtype=torch.float64)
    for i, (p, pred) in enumerate(zip(preds["p_top1"], preds["y_pred"])):
        probs[i] = (1 - p) / (n_classes - 1)
        probs[i, pred] = p
    assert (probs.argmax(1).numpy() == preds["y_pred"].to_numpy()).all()
    assert bins_ece(bins) == pytest.approx(expected_calibration_error(probs, torch.tensor(preds["y_true"])), abs=1e-12)
    assert reliability_diagram({"a": bins}).data
    with pytest.raises(ValueError, match="p_top1"):
        wa.reliability_bins(preds.drop(columns="p_top1"))


def test_calibration_rows_and_table_read_the_records():
    def cal(seed):
        return {"last": {"test": {"ece": 0.1 * seed, "nll": 1.0 + seed, "ece_ts": 0.05, "nll_ts": 0.9 + seed,
                                  "temperature": 1.5, "temperature_split": "id_val"}}}
    records = [{**_run(seed, 3e-4), "calibration": cal(seed)} for seed in (0, 1, 2)]
    records.append({**_run(0, 1e-3)})  # made before calibration was recorded: no rows
    rows = wa.calibration_rows(records)
    assert len(rows) == 3 and set(rows["variant"]) == {"last"} and not rows["headline"].any()
    table = wa.calibration_table(rows).set_index("quantity")
    assert table.loc["ece", "mean"] == pytest.approx(0.1) and table.loc["nll", "n"] == 3
    ref = stats.mean_ci([1.0, 2.0, 3.0])
    assert (table.loc["nll", "low"], table.loc["nll", "high"]) == pytest.approx((ref["low"], ref["high"]))


def test_kept_weights_plan_counts_the_runs_that_keep_weights(tmp_path):
    import yaml
    from pathlib import Path

    from clipdg_nb.config import FinetuneConfig
    from clipdg_nb.pipeline.experiment import load_experiment
    from clipdg_nb.pipeline.validate import kept_weights_plan
    from clipdg_nb.train import kept_weights_estimate

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    params = {"model": "clipdg-tiny-vit", "pretrained": None, "text_mode": "frozen", "vision_weights": None}
    doc = {"experiment": "plan", "stages": [
        {"name": "sweep", "notebook": str(notebooks / "02_few_shot_sweep.ipynb"), "params": params},  # keeps none
        {"name": "soups", "notebook": str(notebooks / "05_model_soups.ipynb"), "grid": {"seed": [0, 1]},
         "params": {**params, "lrs": [1.0e-3, 1.0e-4, 3.0e-4]}}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(doc))
    experiment = load_experiment(tmp_path / "plan.yaml", root=tmp_path)
    each = kept_weights_estimate(FinetuneConfig(**params))
    line = kept_weights_plan(experiment)
    assert line == (f"keep_weights: 6 runs x {each / 1e6:.1f} MB = {6 * each / 1e6:.1f} MB on disk "
                    "(stage soups: 6; final weights in float16, for model soups)")
    assert kept_weights_plan(experiment, [experiment.stage("sweep")]) is None


def test_checkpoint_plan_counts_what_the_checkpoints_write(tmp_path):
    """Each run that trains writes at most ceil(epochs / checkpoint_every) checkpoints of the estimate;
    only `jobs` of them are on disk at once (a run's is deleted when it finishes)."""
    import yaml
    from pathlib import Path

    from clipdg_nb.config import FinetuneConfig
    from clipdg_nb.pipeline.experiment import load_experiment
    from clipdg_nb.pipeline.validate import checkpoint_plan
    from clipdg_nb.train import checkpoint_estimate

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    params = {"model": "clipdg-tiny-vit", "pretrained": None, "text_mode": "frozen", "vision_weights": None,
              "epochs": 5, "checkpoint_every": 2, "swa_last_k": 2}
    doc = {"experiment": "plan", "stages": [
        {"name": "sweep", "notebook": str(notebooks / "02_few_shot_sweep.ipynb"), "grid": {"seed": [0, 1, 2]},
         "params": {**params, "methods": ["linear_probe", "finetune"], "lrs": [1.0e-3, 1.0e-4]}}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(doc))
    experiment = load_experiment(tmp_path / "plan.yaml", root=tmp_path)
    each = checkpoint_estimate(FinetuneConfig(method="finetune", **params))
    # 3 seeds x 2 lrs of finetune (the probe trains no checkpointed weights), ceil(5 / 2) = 3 each
    assert checkpoint_plan(experiment, jobs=4) == (
        f"checkpoints: 6 runs x at most 3 x {each / 1e6:.1f} MB = {18 * each / 1e6:.1f} MB written; "
        f"at most {4 * each / 1e6:.1f} MB on disk at once (4 job(s); a run's is deleted when it finishes)")
    assert f"at most {each / 1e6:.1f} MB on disk at once (1 job(s)" in checkpoint_plan(experiment)


def test_soups_beside_their_runs_are_not_a_setting_of_their_own():
    """A stage's records (its runs and their soups, as the report's stage page reads them) tidy into
    one setting per method: a soup's identity (kind, ingredients) is not a setting that splits it off."""
    records = [{**_run(seed, lr), "identity": {"lr": lr, "seed": seed, "epochs": 4}} for seed in (0, 1) for lr in (1e-3, 3e-4)]
    soups = [{**_soup(seed), "identity": {"kind": "soup", "ingredients": {f"r{seed}": None}, "select_split": "id_val"}}
             for seed in (0, 1)]
    df = runs.tidy(records + soups)
    assert set(df["setting"]) == {""}
    runs.check_one_setting(df, "test")  # no error
    # runs that do differ in a setting are still told apart
    other = {**_run(2, 1e-3), "identity": {"lr": 1e-3, "seed": 2, "epochs": 8}}
    assert set(runs.tidy(records + [other])["setting"]) == {"epochs=4", "epochs=8"}
