"""Run records, predictions, tidy tables and statistics."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from clipdg_nb import results as R


def _record(run_id="r0", seed=0, method="clip_ft", fraction=10.0, lr=1e-5, acc=0.5, **extra):
    rec = {
        "run_id": run_id, "dataset": "fmow", "root_dir": "/data", "method": method,
        "fraction": fraction, "seed": seed, "params": {"lr": lr, "seed": seed},
        "metrics": {"id_val": {"acc_avg": acc}, "test": {"acc_avg": acc - 0.1,
                                                         "acc_worst_region": acc - 0.3}},
        "selection": {"split": "id_val", "metric": "acc_avg", "epoch": 3},
        "timings": {"train_s": 1.0},
        "versions": {"python": "3.11"}, "git_commit": None, "created_at": "2025-01-01T00:00:00+00:00",
    }
    rec.update(extra)
    return rec


# --- run record ------------------------------------------------------------


def test_write_read_roundtrip_converts_scalars(tmp_path):
    rec = _record(
        seed=np.int64(2), fraction=np.float32(10.0),
        metrics={"test": {"acc_avg": np.float32(0.25), "F1-macro_all": torch.tensor(0.5),
                          "acc_worst_region": float("nan")}},
        params={"lr": np.float64(1e-4), "sizes": (1, 2), "path": tmp_path, "arr": np.arange(3)},
    )
    path = R.write_run_record(tmp_path / "run", rec)
    assert path == tmp_path / "run" / "result.json"
    raw = path.read_text()
    assert "NaN" not in raw  # strict JSON
    back = R.read_run_record(tmp_path / "run")
    assert type(back["seed"]) is int and back["seed"] == 2
    assert back["metrics"]["test"] == {"acc_avg": 0.25, "F1-macro_all": 0.5, "acc_worst_region": None}
    assert back["params"] == {"lr": 1e-4, "sizes": [1, 2], "path": str(tmp_path), "arr": [0, 1, 2]}


def test_missing_keys_error_names_them(tmp_path):
    rec = _record()
    del rec["seed"], rec["metrics"]
    with pytest.raises(ValueError, match=r"\['seed', 'metrics'\]"):
        R.write_run_record(tmp_path, rec)
    assert not (tmp_path / "result.json").exists()


def test_bad_metric_value_and_variant_mismatch(tmp_path):
    with pytest.raises(ValueError, match=r"metrics\['test'\]\['acc_avg'\]"):
        R.write_run_record(tmp_path, _record(metrics={"test": {"acc_avg": "high"}}))
    bad = _record(selection={"variant": "best"}, variants={"best": {"test": {"acc_avg": 0.9}}})
    with pytest.raises(ValueError, match="headline"):
        R.write_run_record(tmp_path, bad)
    with pytest.raises(ValueError, match="variants has no entry"):
        R.write_run_record(tmp_path, _record(variants={"swa": {}}))


@pytest.mark.parametrize("crash_at", ["replace", "fsync", "dumps"])
def test_write_is_atomic_on_crash(tmp_path, monkeypatch, crash_at):
    R.write_run_record(tmp_path, _record(acc=0.5))
    before = (tmp_path / "result.json").read_text()

    def boom(*a, **k):
        raise OSError("simulated crash")

    target = {"replace": (os, "replace"), "fsync": (os, "fsync"), "dumps": (json, "dumps")}[crash_at]
    monkeypatch.setattr(*target, boom)
    with pytest.raises(OSError, match="simulated"):
        R.write_run_record(tmp_path, _record(acc=0.9))
    monkeypatch.undo()
    assert (tmp_path / "result.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["result.json"]  # no temp files left behind


def test_run_is_done(tmp_path):
    run = tmp_path / "r"
    assert not R.run_is_done(run)
    R.write_run_record(run, _record(params={"lr": 1e-3, "grid": (1, 2)}))
    assert R.run_is_done(run)
    assert R.run_is_done(run, params={"lr": np.float64(1e-3), "grid": [1, 2]})
    assert not R.run_is_done(run, params={"lr": 1e-4, "grid": [1, 2]})
    (run / "result.json").write_text("{not json")
    with pytest.warns(UserWarning, match="result.json"):
        assert not R.run_is_done(run)


def test_provenance_helpers(tmp_path):
    assert R.git_commit(tmp_path) is None  # not a checkout: None, no exception
    assert R.git_commit(tmp_path / "does-not-exist") is None
    v = R.collect_versions()
    assert {"python", "torch", "open_clip", "wilds", "clipdg_nb"} <= set(v)
    assert v["torch"] == torch.__version__.split("+")[0]
    rec = R.make_run_record(**{k: v for k, v in _record().items()
                               if k not in ("versions", "git_commit", "created_at")})
    assert rec["created_at"].endswith("+00:00") and "versions" in rec and "git_commit" in rec
    R.validate_run_record(rec)


# --- predictions -----------------------------------------------------------


def _preds(n=5):
    return pd.DataFrame({"idx": np.arange(n) * 3, "y_true": np.arange(n) % 2,
                         "y_pred": np.ones(n, dtype=int), "p_top1": np.linspace(0.2, 1.0, n)})


def test_predictions_roundtrip_and_validation(tmp_path):
    df = _preds()
    path = R.write_predictions(tmp_path, "ood_test", df)
    assert path == tmp_path / "predictions" / "ood_test.parquet"
    pd.testing.assert_frame_equal(R.read_predictions(tmp_path, "ood_test"), df)
    assert sorted(os.listdir(tmp_path / "predictions")) == ["ood_test.parquet"]
    with pytest.raises(ValueError, match="p_top1"):
        R.write_predictions(tmp_path, "x", df.drop(columns="p_top1"))
    with pytest.raises(ValueError, match="p_top1"):
        R.write_predictions(tmp_path, "x", df.assign(p_top1=df.p_top1 + 1))
    with pytest.raises(ValueError, match="y_pred"):
        R.write_predictions(tmp_path, "x", df.assign(y_pred=0.5))
    with pytest.raises(ValueError, match="idx"):
        R.write_predictions(tmp_path, "x", df.assign(idx=0))
    with pytest.raises(ValueError, match="split"):
        R.write_predictions(tmp_path, "../evil", df)


# --- tidy tables -----------------------------------------------------------


def _fake_runs(root):
    for seed, acc in enumerate([0.50, 0.56, 0.53]):
        R.write_run_record(root / f"ft-s{seed}", _record(f"ft-s{seed}", seed=seed, acc=acc,
                                                         experiment="demo"))
    swa = _record("swa-s0", method="clip_ft", lr=1e-4, acc=0.6,
                  selection={"split": "id_val", "metric": "acc_avg", "variant": "best"})
    swa["variants"] = {"best": swa["metrics"], "swa": {"test": {"acc_avg": 0.7}}}
    R.write_run_record(root / "swa-s0", swa)
    (root / "empty").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "result.json").write_text('{"run_id": ')


def test_load_runs_tidy_frame(tmp_path):
    _fake_runs(tmp_path)
    with pytest.warns(UserWarning, match=r"corrupt.result\.json"):
        df = R.load_runs(tmp_path)
    assert list(df.columns) == list(R.TIDY_COLUMNS)
    assert set(df.run_id) == {"ft-s0", "ft-s1", "ft-s2", "swa-s0"}
    assert len(df) == 3 * 3 + 3 + 1
    row = df[(df.run_id == "ft-s1") & (df.split == "test") & (df.metric == "acc_worst_region")]
    assert row.value.tolist() == pytest.approx([0.56 - 0.3])
    assert row.experiment.tolist() == ["demo"] and row.lr.tolist() == [1e-5]
    assert row.variant.tolist() == ["selected"] and row.headline.tolist() == [True]
    swa = df[df.run_id == "swa-s0"]
    assert set(swa.variant) == {"best", "swa"}
    assert swa[swa.variant == "swa"].headline.tolist() == [False]
    assert swa.experiment.isna().all()

    wide = R.runs_wide(df)
    assert len(wide) == 5  # 3 plain runs + 2 variants of the swa run
    assert wide.set_index(["run_id", "variant"]).loc[("swa-s0", "swa"), "test/acc_avg"] == pytest.approx(0.7)
    assert math.isnan(wide.set_index(["run_id", "variant"]).loc[("swa-s0", "swa"), "id_val/acc_avg"])

    empty = R.load_runs(tmp_path / "nothing-here")
    assert empty.empty and list(empty.columns) == list(R.TIDY_COLUMNS)


def test_summarise_over_seeds(tmp_path):
    _fake_runs(tmp_path)
    with pytest.warns(UserWarning):
        df = R.load_runs(tmp_path)
    ft = df[df.run_id.str.startswith("ft")]
    table = R.summarise(ft)
    assert len(table) == 3  # one per (split, metric); seeds aggregated
    row = table[(table.split == "id_val") & (table.metric == "acc_avg")].iloc[0]
    ref = R.mean_ci([0.50, 0.56, 0.53])
    assert row["n"] == 3 and row["mean"] == pytest.approx(ref["mean"])
    assert (row["low"], row["high"]) == pytest.approx((ref["low"], ref["high"]))
    with pytest.raises(ValueError, match="nope"):
        R.summarise(ft, by=["nope"])


# --- statistics ------------------------------------------------------------


def test_mean_ci_t_matches_scipy():
    x = [0.61, 0.58, 0.65, 0.60, 0.57]
    out = R.mean_ci(x, level=0.9)
    low, high = stats.t.interval(0.9, df=len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert out["mean"] == pytest.approx(np.mean(x))
    assert out["std"] == pytest.approx(np.std(x, ddof=1))
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert out["n"] == 5


def test_mean_ci_bootstrap_seeded_and_small_n():
    x = np.random.default_rng(1).normal(size=12)
    a = R.mean_ci(x, method="bootstrap", n_boot=2000, seed=7)
    b = R.mean_ci(x, method="bootstrap", n_boot=2000, seed=7)
    c = R.mean_ci(x, method="bootstrap", n_boot=2000, seed=8)
    assert a == b and a != c
    assert x.min() < a["low"] < a["mean"] < a["high"] < x.max()
    # percentile bootstrap of the mean is close to the t-interval for normal data
    t = R.mean_ci(x)
    assert a["low"] == pytest.approx(t["low"], abs=0.25) and a["high"] == pytest.approx(t["high"], abs=0.25)

    one = R.mean_ci([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7
    assert math.isnan(one["low"]) and math.isnan(one["high"]) and math.isnan(one["std"])
    assert R.mean_ci([0.7, float("nan")])["n"] == 1
    assert R.mean_ci([])["n"] == 0
    with pytest.raises(ValueError, match="level"):
        R.mean_ci(x, level=95)
    with pytest.raises(ValueError, match="method"):
        R.mean_ci(x, method="z")


def test_paired_comparison_matches_ttest_rel():
    a = {0: 0.60, 1: 0.64, 2: 0.59, 3: 0.66}
    b = pd.Series({3: 0.61, 1: 0.60, 0: 0.58, 2: 0.60})  # other order: must align by seed
    out = R.paired_comparison(a, b)
    xa = np.array([a[s] for s in range(4)])
    xb = b.loc[range(4)].to_numpy()
    ref = stats.ttest_rel(xa, xb)
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert out["t"] == pytest.approx(ref.statistic)
    d = xa - xb
    assert out["mean_diff"] == pytest.approx(d.mean())
    low, high = stats.t.interval(0.95, df=3, loc=d.mean(), scale=stats.sem(d))
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert (out["n_a_better"], out["n_b_better"], out["n_tied"]) == (3, 1, 0)
    assert out["seeds"] == [0, 1, 2, 3]

    with pytest.raises(ValueError, match=r"only in a \[3\], only in b \[5\]"):
        R.paired_comparison(a, {0: 0.1, 1: 0.1, 2: 0.1, 5: 0.1})
    one = R.paired_comparison({0: 0.5}, {0: 0.4})
    assert one["n"] == 1 and math.isnan(one["p_value"])
