"""The run folder contract (runs.py: ids, records, predictions, atomic writes, tidy tables) and the
statistics over seeds (stats.py), against hand computations and scipy."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from clipdg_nb import paths, runs
from clipdg_nb.analysis import stats
from clipdg_nb.config import FinetuneConfig
from clipdg_nb.runs import Run


def _record(run_id="r0", seed=0, method="finetune", fraction=0.1, lr=1e-5, acc=0.5, **extra):
    rec = {
        "run_id": run_id, "experiment": "demo", "dataset": "fmow", "root_dir": "/data", "method": method,
        "fraction": fraction, "seed": seed, "lr": lr, "params": {"lr": lr, "seed": seed},
        "metrics": {"id_val": {"acc_avg": acc}, "test": {"acc_avg": acc - 0.1, "acc_worst_region": acc - 0.3}},
        "selection": {"split": "id_val", "metric": "acc_avg", "epoch": 3, "variant": "best"},
        "timings": {"train_s": 1.0},
    }
    rec.update(extra)
    return rec


def _finish(root, record):
    """Write a record the way methods.run does: into the run being built, then renamed into place."""
    return Run(root / record["run_id"]).finish(record)


# --- ids and identity --------------------------------------------------------

def test_run_id_is_readable_and_unique_for_the_science():
    cfg = FinetuneConfig(fraction=0.1, lr=1e-4, seed=2).validate()
    rid = runs.run_id(cfg.identity())
    assert rid.startswith("fmow-finetune-f0.1-lr0.0001-s2-") and len(rid.rsplit("-", 1)[1]) == 8
    assert runs.run_id(FinetuneConfig(fraction=0.1, lr=1e-4, seed=2, swa_last_k=3).validate().identity()) != rid
    for where in ({"output_dir": "/elsewhere"}, {"cache_dir": "/c"}, {"eval_batch_size": 3}, {"root_dir": "/d"},
                  {"num_workers": 4}, {"device": "cpu"}):
        assert runs.run_id(FinetuneConfig(fraction=0.1, lr=1e-4, seed=2, **where).validate().identity()) == rid
    probe = FinetuneConfig(method="linear_probe", fraction=0.1, lr=1e-4, seed=2).validate()
    assert "-lr" not in Run.of(probe).id  # a probe has no learning rate
    assert Run.of(probe).id == Run.of(FinetuneConfig(method="linear_probe", fraction=0.1, lr=3.0, epochs=12,
                                                     seed=2).validate()).id


# --- run record ----------------------------------------------------------------

def test_finish_writes_strict_json_with_provenance(tmp_path):
    rec = _record(seed=np.int64(2), fraction=np.float32(0.5),
                  metrics={"test": {"acc_avg": np.float32(0.25), "F1-macro_all": torch.tensor(0.5),
                                    "acc_worst_region": float("nan")}},
                  params={"lr": np.float64(1e-4), "sizes": (1, 2), "path": tmp_path, "arr": np.arange(3)})
    back = _finish(tmp_path, rec)
    raw = (tmp_path / "r0" / "result.json").read_text()
    assert "NaN" not in raw  # strict JSON
    assert type(back["seed"]) is int and back["seed"] == 2
    assert back["metrics"]["test"] == {"acc_avg": 0.25, "F1-macro_all": 0.5, "acc_worst_region": None}
    assert back["params"] == {"lr": 1e-4, "sizes": [1, 2], "path": str(tmp_path), "arr": [0, 1, 2]}
    assert back["created_at"].endswith("+00:00") and back["versions"]["torch"] == torch.__version__.split("+")[0]
    assert {"python", "torch", "open_clip", "wilds", "clipdg_nb"} <= set(back["versions"])
    assert not (tmp_path / "r0.partial").exists()


@pytest.mark.parametrize("crash_at", ["replace", "fsync", "dumps"])
def test_write_is_atomic_on_crash(tmp_path, monkeypatch, crash_at):
    paths.write_json(tmp_path / "result.json", {"acc": 0.5})
    before = (tmp_path / "result.json").read_text()

    def boom(*a, **k):
        raise OSError("simulated crash")

    target = {"replace": (os, "replace"), "fsync": (os, "fsync"), "dumps": (json, "dumps")}[crash_at]
    monkeypatch.setattr(*target, boom)
    with pytest.raises(OSError, match="simulated"):
        paths.write_json(tmp_path / "result.json", {"acc": 0.9})
    monkeypatch.undo()
    assert (tmp_path / "result.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["result.json"]  # no temp files left behind


def test_a_new_run_replaces_the_old_only_when_complete(tmp_path):
    run = Run(tmp_path / "r0")
    assert not run.is_done() and run.record() is None
    run.write_predictions("test", _preds(), variant="ema")
    first = _finish(tmp_path, _record(variants=None))
    assert run.is_done() and run.is_done(None)
    assert not (run.path / "variants").exists()  # only what the record lists
    run.write_predictions("test", _preds())  # a rerun being built does not touch the finished run
    assert run.record() == first and not (run.path / "predictions").exists()
    second = _finish(tmp_path, _record(acc=0.9))
    assert second["metrics"]["id_val"]["acc_avg"] == 0.9 and (run.path / "predictions" / "test.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0"]
    (run.path / "result.json").write_text("{not json")
    assert not run.is_done()


def test_is_done_compares_identity(tmp_path):
    _finish(tmp_path, _record(identity={"lr": 1e-3, "grid": [1, 2]}))
    run = Run(tmp_path / "r0")
    assert run.is_done({"lr": np.float64(1e-3), "grid": (1, 2)})
    assert not run.is_done({"lr": 1e-4, "grid": [1, 2]})


def test_provenance_never_stops_a_run(tmp_path):
    assert runs.git_commit(tmp_path) is None  # not a checkout: None, no exception
    assert runs.git_commit(tmp_path / "does-not-exist") is None


# --- predictions -------------------------------------------------------------

def _preds(n=5):
    return pd.DataFrame({"idx": np.arange(n) * 3, "y_true": np.arange(n) % 2,
                         "y_pred": np.ones(n, dtype=int), "p_top1": np.linspace(0.2, 1.0, n)})


def test_predictions_roundtrip_per_variant(tmp_path):
    run = Run(tmp_path / "r0")
    run.write_predictions("test", _preds())
    run.write_predictions("test", _preds(3), variant="swa")
    _finish(tmp_path, _record(variants={"best": _record()["metrics"], "swa": {"test": {"acc_avg": 0.7}}}))
    pd.testing.assert_frame_equal(run.predictions("test").drop(columns="split"), _preds())
    assert len(run.predictions("test", variant="swa")) == 3
    assert len(run.predictions("test", variant="best")) == 5  # the headline variant
    with pytest.raises(ValueError, match="no variant 'ema'"):
        run.predictions("test", variant="ema")
    with pytest.raises(FileNotFoundError, match="id_val.parquet"):
        run.predictions()


# --- tidy tables -------------------------------------------------------------

def _fake_runs(root):
    for seed, acc in enumerate([0.50, 0.56, 0.53]):
        _finish(root, _record(f"ft-s{seed}", seed=seed, acc=acc))
    swa = _record("swa-s0", lr=1e-4, acc=0.6)
    swa["variants"] = {"best": swa["metrics"], "swa": {"test": {"acc_avg": 0.7}}}
    _finish(root, swa)
    (root / "empty").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "result.json").write_text('{"run_id": ')


def test_tidy_frame_of_records(tmp_path):
    _fake_runs(tmp_path)
    with pytest.warns(UserWarning, match=r"corrupt.result\.json"):
        df = runs.tidy(runs.load_records(tmp_path))
    assert list(df.columns) == list(runs.TIDY_COLUMNS)
    assert set(df.run_id) == {"ft-s0", "ft-s1", "ft-s2", "swa-s0"}
    assert len(df) == 3 * 3 + 3 + 1
    row = df[(df.run_id == "ft-s1") & (df.split == "test") & (df.metric == "acc_worst_region")]
    assert row.value.tolist() == pytest.approx([0.56 - 0.3])
    assert row.experiment.tolist() == ["demo"] and row.lr.tolist() == [1e-5]
    assert row.variant.tolist() == ["best"] and row.headline.tolist() == [True]
    swa = df[df.run_id == "swa-s0"]
    assert set(swa.variant) == {"best", "swa"}
    assert swa[swa.variant == "swa"].headline.tolist() == [False]
    empty = runs.tidy(runs.load_records(tmp_path / "nothing-here"))
    assert empty.empty and list(empty.columns) == list(runs.TIDY_COLUMNS)


def test_summarise_over_seeds(tmp_path):
    _fake_runs(tmp_path)
    with pytest.warns(UserWarning):
        df = runs.tidy(runs.load_records(tmp_path))
    ft = df[df.run_id.str.startswith("ft")]
    table = stats.summarise(ft)
    assert len(table) == 3  # one per (split, metric); seeds aggregated
    row = table[(table.split == "id_val") & (table.metric == "acc_avg")].iloc[0]
    ref = stats.mean_ci([0.50, 0.56, 0.53])
    assert row["n"] == 3 and row["mean"] == pytest.approx(ref["mean"])
    assert (row["low"], row["high"]) == pytest.approx((ref["low"], ref["high"]))
    with pytest.raises(ValueError, match="nope"):
        stats.summarise(ft, by=["nope"])


# --- statistics ------------------------------------------------------------


def test_mean_ci_t_matches_scipy():
    x = [0.61, 0.58, 0.65, 0.60, 0.57]
    out = stats.mean_ci(x, level=0.9)
    low, high = scipy_stats.t.interval(0.9, df=len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert out["mean"] == pytest.approx(np.mean(x))
    assert out["std"] == pytest.approx(np.std(x, ddof=1))
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert out["n"] == 5


def test_mean_ci_bootstrap_seeded_and_small_n():
    x = np.random.default_rng(1).normal(size=12)
    a = stats.mean_ci(x, method="bootstrap", n_boot=2000, seed=7)
    b = stats.mean_ci(x, method="bootstrap", n_boot=2000, seed=7)
    c = stats.mean_ci(x, method="bootstrap", n_boot=2000, seed=8)
    assert a == b and a != c
    assert x.min() < a["low"] < a["mean"] < a["high"] < x.max()
    # percentile bootstrap of the mean is close to the t-interval for normal data
    t = stats.mean_ci(x)
    assert a["low"] == pytest.approx(t["low"], abs=0.25) and a["high"] == pytest.approx(t["high"], abs=0.25)

    one = stats.mean_ci([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7
    assert math.isnan(one["low"]) and math.isnan(one["high"]) and math.isnan(one["std"])
    assert stats.mean_ci([0.7, float("nan")])["n"] == 1
    assert stats.mean_ci([])["n"] == 0
    with pytest.raises(ValueError, match="level"):
        stats.mean_ci(x, level=95)
    with pytest.raises(ValueError, match="method"):
        stats.mean_ci(x, method="z")


def test_paired_comparison_matches_ttest_rel():
    a = {0: 0.60, 1: 0.64, 2: 0.59, 3: 0.66}
    b = pd.Series({3: 0.61, 1: 0.60, 0: 0.58, 2: 0.60})  # other order: must align by seed
    out = stats.paired_comparison(a, b)
    xa = np.array([a[s] for s in range(4)])
    xb = b.loc[range(4)].to_numpy()
    ref = scipy_stats.ttest_rel(xa, xb)
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert out["t"] == pytest.approx(ref.statistic)
    d = xa - xb
    assert out["mean_diff"] == pytest.approx(d.mean())
    low, high = scipy_stats.t.interval(0.95, df=3, loc=d.mean(), scale=scipy_stats.sem(d))
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert (out["n_a_better"], out["n_b_better"], out["n_tied"]) == (3, 1, 0)
    assert out["seeds"] == [0, 1, 2, 3]

    with pytest.raises(ValueError, match=r"only in a \[3\], only in b \[5\]"):
        stats.paired_comparison(a, {0: 0.1, 1: 0.1, 2: 0.1, 5: 0.1})
    one = stats.paired_comparison({0: 0.5}, {0: 0.4})
    assert one["n"] == 1 and math.isnan(one["p_value"])
