"""The figure functions, checked on the figure objects: panels and axes, group order, colours and
legend, fraction ticks, dodged series, one metric per axis, the WiSE-FT curve."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clipdg_nb.analysis import figures
from clipdg_nb.analysis.tables import group_accuracy


def fmow_predictions():
    rows = []
    for split, years in (("id_test", ["2009", "2010", "2011"]), ("test", ["2016", "2017"])):
        for i, (region, year) in enumerate([(r, y) for r in ("Asia", "Europe", "Africa") for y in years]):
            rows.append({"idx": len(rows), "y_true": i % 3, "y_pred": (i * 2) % 3, "p_top1": 0.5, "split": split,
                         "region": region, "year": year})
    return pd.DataFrame(rows)


def bars_by_axis(fig):
    out = {}
    for trace in fig.data:
        out.setdefault(trace.xaxis, []).append(trace)
    return out


def test_group_bars_one_panel_per_field_natural_order_one_legend():
    fig = figures.group_bars(group_accuracy(fmow_predictions()))
    by_axis = bars_by_axis(fig)
    assert set(by_axis) == {"x", "x2"}  # region bars and year bars each on their own x axis
    assert {tuple(t.x) for t in by_axis["x"]} <= {("Africa", "Asia", "Europe")}
    assert set(np.concatenate([t.x for t in by_axis["x2"]])) == {"2009", "2010", "2011", "2016", "2017"}
    assert fig.layout.xaxis.categoryorder == fig.layout.xaxis2.categoryorder == "array"
    assert list(fig.layout.xaxis2.categoryarray) == ["2009", "2010", "2011", "2016", "2017"]
    assert fig.layout.xaxis.type == fig.layout.xaxis2.type == "category"  # years are names, not numbers
    # one colour per split in both panels, each split once in the legend
    colours = {(t.name, t.marker.color) for t in fig.data}
    assert len(colours) == len({t.name for t in fig.data}) == 2
    assert sorted(t.name for t in fig.data if t.showlegend) == ["ID test", "OOD test"]
    assert fig.layout.height <= 700


def test_group_bars_orders_locations_as_numbers():
    locations = [str(i) for i in (0, 1, 2, 10, 11, 3)]
    preds = pd.DataFrame({"idx": range(12), "y_true": 0, "y_pred": [0, 1] * 6, "p_top1": 0.5,
                          "split": ["test"] * 12, "location": locations * 2})
    fig = figures.group_bars(group_accuracy(preds))
    assert list(fig.layout.xaxis.categoryarray) == ["0", "1", "2", "3", "10", "11"]
    assert len(fig.data) == 1 and fig.layout.height < 500


def test_fraction_axis_reads_in_percent():
    summary = pd.DataFrame({"method": ["finetune"] * 4, "fraction": [0.03, 0.1, 0.5, 1.0],
                            "mean": [0.3, 0.4, 0.5, 0.6], "low": [0.2, 0.3, 0.4, 0.5], "high": [0.4, 0.5, 0.6, 0.7],
                            "n": 3})
    fig = figures.metric_vs_fraction(summary, yaxis_title="acc_avg")
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.tickvals) == [0.03, 0.1, 0.5, 1.0]
    assert list(fig.layout.xaxis.ticktext) == ["3%", "10%", "50%", "100%"]
    assert fig.layout.yaxis.title.text == "acc_avg"
    # the paper's grid: 90 % beside 100 % would overlap, so it keeps its tick but not its label
    vals, text = figures.fraction_ticks([0.03, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    assert text == ["3%", "5%", "10%", "30%", "50%", "70%", "", "100%"]


def test_paired_gain_dodges_series_and_keeps_true_fractions():
    table = pd.DataFrame({"comparison": ["swa - last"] * 3 + ["swa - best"] * 3, "fraction": [0.1, 0.5, 1.0] * 2,
                          "mean_diff": [0.01, 0.02, 0.0, -0.01, 0.03, 0.01], "low": -0.05, "high": 0.06})
    fig = figures.paired_gain(table, yaxis_title="difference in acc_worst_region")
    a, b = fig.data
    assert all(xa != xb for xa, xb in zip(a.x, b.x))  # distinct offsets: intervals side by side
    assert all(abs(math.log10(xa / f)) < 0.05 for xa, f in zip(a.x, [0.1, 0.5, 1.0]))  # small ones
    assert list(a.text) == ["10%", "50%", "100%"]  # hover shows the true fraction
    assert list(fig.layout.xaxis.ticktext) == ["10%", "50%", "100%"]
    assert fig.layout.yaxis.title.text == "difference in acc_worst_region"


def variant_rows():
    rows = []
    values = {"best": 0.61, "last": 0.619, "swa": 0.619, "wise_ft_0": 0.40, "wise_ft_0.5": 0.58}
    for variant, v in values.items():
        for split, metric, shift in (("id_val", "acc_avg", 0), ("id_test", "acc_avg", 0.01),
                                     ("val", "acc_worst_region", -0.3), ("test", "acc_worst_region", -0.31)):
            rows.append({"variant": variant, "split": split, "metric": metric,
                         "value": v + shift + (0.05 if variant == "wise_ft_0.5" and split == "test" else 0)})
    return pd.DataFrame(rows)


def test_variant_bars_one_metric_per_axis_short_labels():
    fig = figures.variant_bars(variant_rows())
    assert fig.layout.yaxis.title.text == "acc_avg" and fig.layout.yaxis2.title.text == "acc_worst_region"
    by_axis = bars_by_axis(fig)
    assert {s for t in by_axis["x"] for s in t.x} == {"ID val", "ID test"}
    assert {s for t in by_axis["x2"] for s in t.x} == {"OOD val", "OOD test"}
    assert all(t.texttemplate == "%{y:.2f}" for t in fig.data)
    assert fig.layout.uniformtext.mode == "hide"
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["best epoch", "last epoch", "SWA", "WiSE-FT α=0", "WiSE-FT α=0.5"]  # each once
    same = {t.name: t.marker.color for t in by_axis["x"]}
    assert all(same[t.name] == t.marker.color for t in by_axis["x2"])
    # iWildCam: one metric on both domains still gets ID and OOD panels
    iwild = variant_rows().assign(metric="F1-macro_all")
    fig = figures.variant_bars(iwild)
    assert fig.layout.yaxis.title.text == fig.layout.yaxis2.title.text == "F1-macro_all"


def test_wise_ft_curve_from_zero_shot_to_fine_tuned():
    fig = figures.wise_ft_curve(variant_rows())
    curve = fig.data[0]
    assert list(curve.text) == ["α=0", "α=0.5", "α=1"]  # 'last' is alpha 1
    assert list(curve.x) == pytest.approx([0.41, 0.59, 0.629])
    assert list(curve.y) == pytest.approx([0.09, 0.32, 0.309])
    markers = [t.name for t in fig.data[1:]]
    assert markers == ["best epoch", "last epoch", "SWA"]
    assert fig.layout.xaxis.title.text == "ID test: acc_avg"
    assert fig.layout.yaxis.title.text == "OOD test: acc_worst_region"
    with pytest.raises(ValueError, match="wise_alphas"):
        figures.wise_ft_curve(variant_rows()[lambda d: ~d["variant"].str.startswith("wise")])


def test_id_vs_ood_names_its_metrics():
    points = pd.DataFrame({"method": ["finetune", "vision_only"], "id": [0.6, 0.5], "ood": [0.3, 0.2],
                           "fraction": [0.1, 1.0]})
    fig = figures.id_vs_ood(points, xaxis_title="ID test: acc_avg", yaxis_title="OOD test: acc_worst_region")
    assert fig.layout.xaxis.title.text == "ID test: acc_avg"
    assert list(fig.data[0].text) == ["fraction 10%"]
