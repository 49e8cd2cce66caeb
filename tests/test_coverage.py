"""The coverage ablation's analysis: a run's coverage from its weights, the gap per coverage."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from clipdg_nb.analysis import headline_metric
from clipdg_nb.analysis.coverage import coverage_of, gap_by_coverage, gap_vs_coverage
from clipdg_nb.runs import TIDY_COLUMNS


def test_coverage_of_reads_meta_then_folder(tmp_path):
    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"key": "k", "config": {"seed": 0}}))  # before coverage existed
    assert coverage_of(folder / "tiny-clip.safetensors") == 1.0
    (folder / "meta.json").write_text(json.dumps({"key": "k", "config": {"coverage": 0.5}, "coverage": 0.5}))
    assert coverage_of(folder / "tiny-clip.safetensors") == 0.5
    assert coverage_of(tmp_path / "x" / "coverage-0.25" / "tiny-clip.safetensors") == 0.25
    assert coverage_of("openai") is None and coverage_of(None) is None


def _frame(gaps: dict) -> pd.DataFrame:
    rows = []
    for coverage, gap in gaps.items():
        for method, shift in (("finetune", gap), ("vision_only", 0.0)):
            for seed in range(3):
                for split in ("id_val", "test"):
                    value = 0.3 + shift + 0.01 * seed + (0.002 * seed * (method == "finetune"))
                    rows.append({"run_id": f"{coverage}-{method}-{seed}", "experiment": "e", "dataset": "fmow",
                                 "method": method, "fraction": 0.1, "seed": seed, "lr": 3e-4, "variant": "best",
                                 "headline": True, "split": split, "metric": headline_metric("fmow", split),
                                 "value": value, "coverage": coverage})
    return pd.DataFrame(rows, columns=[*TIDY_COLUMNS, "coverage"])


def test_gap_by_coverage_pairs_by_seed_within_each_coverage():
    table = gap_by_coverage(_frame({1.0: 0.2, 0.5: 0.1, 0.0: -0.05}))
    assert list(table["coverage"]) == [0.0, 0.5, 1.0]
    assert np.allclose(table["mean_gap"], [-0.048, 0.102, 0.202])
    assert (table["n"] == 3).all() and (table["low"] < table["mean_gap"]).all() and (table["high"] > table["mean_gap"]).all()
    assert np.allclose(table["clip"] - table["vision"], table["mean_gap"])
    fig = gap_vs_coverage(table)
    assert len(fig.data) == 1 and list(fig.data[0].y) == list(table["mean_gap"])


def test_gap_by_coverage_without_coverage_column_says_what_to_do():
    import pytest

    with pytest.raises(ValueError, match="with_coverage"):
        gap_by_coverage(_frame({1.0: 0.1}).drop(columns="coverage"))
    assert gap_by_coverage(_frame({1.0: 0.1}).assign(method="finetune")).empty


def test_accuracy_by_naming_splits_classes_by_the_reference_captions(tmp_path):
    from clipdg_nb.analysis.coverage import accuracy_by_naming
    from clipdg_nb.data import class_names
    from clipdg_nb.paths import write_json

    names = class_names("fmow")
    for cov, folder in ((1.0, "pretrain"), (0.5, "pretrain/coverage-0.5")):
        (tmp_path / folder).mkdir(parents=True)
        write_json(tmp_path / folder / "meta.json", {"key": "k", "config": {}, "coverage": cov,
                                                     "named_concepts": [f"fmow:{c}" for c in names[: 31 if cov < 1 else 62]]})
        run = tmp_path / "runs" / "e" / f"zs-{cov}"
        (run / "predictions").mkdir(parents=True)
        y = np.arange(62)
        y_pred = np.where(y < 31, y, 0) if cov < 1 else y  # right on the named half only, at 0.5
        pd.DataFrame({"idx": y, "y_true": y, "y_pred": y_pred, "p_top1": 0.5}).to_parquet(run / "predictions" / "test.parquet")
        write_json(run / "result.json", {"run_id": f"zs-{cov}", "experiment": "e", "dataset": "fmow", "method": "zeroshot",
                                         "fraction": 0.0, "seed": 0, "metrics": {"test": {}}, "selection": {},
                                         "params": {"pretrained": str(tmp_path / folder / "tiny-clip.safetensors")}})
    table = accuracy_by_naming(tmp_path / "runs", "e", "fmow", splits=("test",))
    got = {(r.coverage, r.named): r.accuracy for r in table.itertuples()}
    assert got == {(0.5, "named at 0.5"): 1.0, (0.5, "unnamed at 0.5"): 0.0,
                   (1.0, "named at 0.5"): 1.0, (1.0, "unnamed at 0.5"): 1.0}
