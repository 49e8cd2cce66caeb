"""analysis.py on fake run records: selection on validation only, intervals, paired gains, trends."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clipdg_nb import analysis, runs
from clipdg_nb.analysis import stats, tables
from clipdg_nb.analysis.tables import group_accuracy

# identical fake differences across seeds make scipy warn about precision; the numbers are exact
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")


def _metrics(id_val, test, id_test=None, val=None):
    id_test = id_val if id_test is None else id_test
    val = test if val is None else val
    return {"id_val": {"acc_avg": id_val, "acc_worst_region": id_val - 0.1, "acc_region:Asia": id_val - 0.05,
                       "acc_region:Africa": id_val - 0.1},
            "id_test": {"acc_avg": id_test, "acc_worst_region": id_test - 0.1},
            "val": {"acc_avg": val + 0.1, "acc_worst_region": val},
            "test": {"acc_avg": test + 0.1, "acc_worst_region": test, "acc_region:Asia": test + 0.02,
                     "acc_region:Africa": test}}


def _record(method, fraction, seed, lr, variants, headline="best"):
    record = dict(run_id=f"fmow-{method}-f{fraction:g}-lr{lr}-s{seed}", experiment="fake", dataset="fmow",
                  root_dir="x", method=method, fraction=fraction, seed=seed, lr=lr, params={"lr": lr},
                  metrics=variants[headline], selection={"split": "id_val", "variant": headline})
    if len(variants) > 1:
        record["variants"] = variants
    return record


@pytest.fixture(scope="module")
def tidy(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    records = [_record("zeroshot", 0.0, 0, None, {"zeroshot": _metrics(0.30, 0.20)}, "zeroshot")]
    for seed in range(3):
        noise = 0.01 * seed
        for fraction in (0.1, 1.0):
            base = 0.5 + 0.2 * fraction + noise
            # lr 1e-4 is best on validation; lr 1e-3 would look best on test (it must not be chosen)
            for lr, dv, dt in ((1e-4, 0.05, 0.0), (1e-3, 0.0, 0.08)):
                best = _metrics(base + dv, base - 0.2 + dt)
                last = _metrics(base + dv - 0.02, base - 0.22 + dt)
                swa = _metrics(base + dv + 0.01, base - 0.2 + dt + 0.03 + 0.001 * seed)
                records.append(_record("finetune", fraction, seed, lr, {"best": best, "last": last, "swa": swa}))
                records.append(_record("vision_only", fraction, seed, lr,
                                       {"best": _metrics(base + dv - 0.1, base - 0.35 + dt)}))
    for rec in records:
        runs.Run(root / rec["run_id"]).finish(rec)
    return runs.tidy(runs.load_records(root))


def test_lr_is_chosen_on_validation_never_test(tidy):
    sel = analysis.select_lr(tidy, "id_val")
    ft = sel[sel["method"] == "finetune"]
    assert list(ft["lr"]) == [1e-4, 1e-4] and set(ft["select_metric"]) == {"acc_avg"}
    assert (ft["n_seeds"] == 3).all() and (ft["n_lrs"] == 2).all()
    zs = sel[sel["method"] == "zeroshot"]
    assert len(zs) == 1 and math.isnan(zs["lr"].iloc[0])
    # on OOD val the FMoW OOD metric is used
    assert set(analysis.select_lr(tidy, "val")["select_metric"]) == {"acc_worst_region"}
    for split in ("test", "id_test"):
        with pytest.raises(ValueError, match="never on test"):
            analysis.select_lr(tidy, split)


def test_curves_have_intervals_over_seeds(tidy):
    chosen = analysis.apply_selection(tidy, analysis.select_lr(tidy, "id_val"))
    assert set(chosen["lr"].dropna()) == {1e-4}
    curves = analysis.fraction_curves(chosen, "test")
    row = curves[(curves["method"] == "finetune") & (curves["fraction"] == 0.1)].iloc[0]
    expected = stats.mean_ci([0.5 + 0.02 - 0.2 + 0.01 * s for s in range(3)])
    assert row["metric"] == "acc_worst_region" and row["n"] == 3
    assert row["mean"] == pytest.approx(expected["mean"]) and row["low"] == pytest.approx(expected["low"])
    assert "zeroshot" not in set(curves["method"])
    assert analysis.zero_shot_reference(tidy, "test") == {"fmow": pytest.approx(0.20)}


def test_swa_gain_and_method_comparison_are_paired(tidy):
    chosen = analysis.apply_selection(tidy, analysis.select_lr(tidy, "id_val"))
    gain = analysis.swa_gain(chosen, "test", baseline="last")
    assert list(gain["fraction"]) == [0.1, 1.0] and (gain["n"] == 3).all()
    assert gain["mean_diff"].to_numpy() == pytest.approx([0.051, 0.051])
    assert (gain["low"] > 0).all() and set(gain["comparison"]) == {"swa - last"}
    vs_best = analysis.swa_gain(chosen, "test", baseline="best")
    assert vs_best["mean_diff"].to_numpy() == pytest.approx([0.031, 0.031])
    comp = analysis.compare_methods(chosen, "finetune", "vision_only", "test")
    assert comp["mean_diff"].to_numpy() == pytest.approx([0.15, 0.15]) and (comp["n_a_better"] == 3).all()
    with pytest.raises(ValueError, match="swa"):
        analysis.swa_gain(chosen, "test", method="vision_only")


def test_id_ood_points_trend_and_groups(tidy):
    chosen = analysis.apply_selection(tidy, analysis.select_lr(tidy, "id_val"))
    pts = analysis.id_ood_points(chosen)
    assert len(pts) == 1 + 2 * 2 * 3 and {"id", "ood"} <= set(pts.columns)
    fit = analysis.fit_trend(pts, methods=["vision_only"])
    assert fit is not None and fit["n"] == 6
    er = analysis.effective_robustness(pts, fit)
    assert abs(er[pts["method"] == "vision_only"].mean()) < 0.02
    assert er[pts["method"] == "finetune"].mean() > 0.02  # fine-tuned CLIP sits above the vision-only trend
    worst = analysis.worst_groups(chosen, "test", "region", k=1)
    assert set(worst["group"]) == {"Africa"}
    preds = pd.DataFrame({"y_true": [0, 1, 1, 2], "y_pred": [0, 0, 1, 2], "region": ["A", "A", "B", "B"]})
    acc = group_accuracy(preds, ["region"])
    assert list(acc["group"]) == ["A", "B"] and list(acc["value"]) == [0.5, 1.0]


def test_variant_and_settings_tables(tidy):
    rec = _record("finetune", 0.1, 0, 1e-4, {"best": _metrics(0.6, 0.4), "swa": _metrics(0.62, 0.45)})
    table = tables.variant_table(rec, splits=["id_test", "test"])
    assert set(table["variant"]) == {"best", "swa"}
    assert table.loc[(table["variant"] == "swa") & (table["split"] == "test"), "value"].item() == pytest.approx(0.45)
    sel = analysis.select_lr(tidy, "id_val")
    settings = analysis.settings_table(sel, tidy)
    assert {"lr", "select_mean", "test_mean"} <= set(settings.columns) and len(settings) == len(sel)
    assert np.isfinite(settings["test_mean"]).all()


def test_findings_answer_each_question_with_a_measured_number(tidy):
    chosen = analysis.apply_selection(tidy, analysis.select_lr(tidy, "id_val"))
    table = analysis.findings(chosen, "fmow").set_index("question")
    zs = table.loc["zero-shot ID accuracy >= 3x chance"]
    # zero-shot id_test acc_avg is 0.30 in the fixture: 18.6x chance (1/62)
    assert zs["measured"].startswith("0.300 = 18.6x") and zs["holds"] is True
    ft = table.loc["finetune ID above zero-shot ID at fraction 1"]
    assert ft["holds"] is True and "+0.460" in ft["measured"]  # 0.5 + 0.2 + 0.05 + mean noise 0.01 - 0.30
    # vision-only trails fine-tuning by exactly 0.1 ID in every seed: an interval above zero
    clip_vs = table.loc["finetune - vision_only on id_test, fraction 1"]
    assert clip_vs["holds"] is True and clip_vs["measured"].startswith("+0.100")
    # SWA beats 'last' on OOD by 0.05 (+0.001 * seed): interval above zero; vs 'best' +0.03 likewise
    assert table.loc["SWA - last on test, fraction 1 (paired, 95%)"]["holds"] is True
    assert table.loc["finetune: OOD accuracy below ID (all fractions)"]["holds"] is True


def test_interval_verdict_is_three_way():
    assert analysis.interval_verdict(0.01, 0.2) is True
    assert analysis.interval_verdict(-0.2, -0.01) is False
    assert analysis.interval_verdict(-0.1, 0.1) is None
    assert analysis.interval_verdict(float("nan"), float("nan")) is None


def test_worst_groups_fall_back_to_saved_predictions(tmp_path):
    """iWildCam reports no per-group metric: the worst locations come from the predictions."""
    rec = _record("finetune", 0.5, 0, 1e-4, {"best": {"test": {"F1-macro_all": 0.5}}})
    rec["dataset"] = "iwildcam"
    run = runs.Run(tmp_path / "fake" / rec["run_id"])
    run.write_predictions("test", pd.DataFrame({"idx": [1, 2, 3, 4], "y_true": [0, 1, 1, 1], "y_pred": [0, 0, 1, 1],
                                               "p_top1": [0.9] * 4, "location": ["10", "10", "2", "2"]}))
    run.finish(rec)
    df = runs.tidy(runs.load_records(tmp_path / "fake"))
    worst = analysis.worst_groups(df, "test", "location", k=None, output_dir=tmp_path)
    assert list(worst["group"]) == ["10", "2"] and list(worst["value"]) == [0.5, 1.0]


def test_settings_tuned_like_lr_are_chosen_with_it_on_validation(tmp_path):
    """A method that tunes another field like lr (MethodSpec.tuned, e.g. L2-SP's alpha): each
    (lr, value) is one candidate; runs of other values are never pooled with the chosen one."""
    records = []
    for seed in range(2):
        for alpha, dv, dt in ((0.1, 0.0, 0.1), (1.0, 0.05, 0.0)):  # alpha 1.0 wins on id_val, 0.1 on test
            rec = _record("l2sp", 1.0, seed, 1e-4, {"best": _metrics(0.6 + dv, 0.4 + dt)})
            rec.update(run_id=f"{rec['run_id']}-a{alpha:g}", tuned={"l2sp_alpha": alpha})
            records.append(rec)
    for rec in records:
        runs.Run(tmp_path / rec["run_id"]).finish(rec)
    df = runs.tidy(runs.load_records(tmp_path))
    assert set(df["tuned"]) == {"l2sp_alpha=0.1", "l2sp_alpha=1"}
    sel = analysis.select_lr(df, "id_val")
    assert len(sel) == 1 and sel["tuned"].iloc[0] == "l2sp_alpha=1" and sel["n_seeds"].iloc[0] == 2
    chosen = analysis.apply_selection(df, sel)
    assert set(chosen["tuned"]) == {"l2sp_alpha=1"} and chosen["run_id"].nunique() == 2
