"""Where a point's time goes: `point.stage_times` from papermill's timestamps and the run records'
timings (checked against hand-made notebooks), the sweep's per-stage summary, and no plotly.js
inline in notebooks the runner executes."""
from __future__ import annotations

import datetime as dt

import nbformat
import pytest

from clipdg_nb.pipeline import point as point_mod
from clipdg_nb.pipeline.point import PointResult, stage_times
from clipdg_nb.pipeline.runner import SweepSummary

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def _at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


def _notebook(spans, start=0.0, end=None, tags=None):
    """A notebook whose cells papermill ran over `spans` [(start, end) seconds after T0]."""
    nb = nbformat.v4.new_notebook()
    tags = tags or {}
    for i, (a, b) in enumerate(spans):
        cell = nbformat.v4.new_markdown_cell("m") if i == 0 else nbformat.v4.new_code_cell("x = 1")
        cell.metadata["tags"] = tags.get(i, [])
        cell.metadata["papermill"] = {"start_time": _at(a), "end_time": _at(b), "duration": b - a,
                                      "status": "completed", "exception": False}
        nb.cells.append(cell)
    nb.metadata["papermill"] = {"start_time": _at(start), "end_time": _at(end if end is not None else spans[-1][1])}
    return nb


def test_stage_times_by_hand():
    # kernel ready at 2.0; markdown, parameters, injected parameters, imports (2.5-6.5), the run
    # cell (7.0-27.0), a figure cell (27.5-29.0); papermill ends at 31.0; the runner saw 32.5 s.
    spans = [(2.0, 2.1), (2.2, 2.3), (2.4, 2.45), (2.5, 6.5), (7.0, 27.0), (27.5, 29.0)]
    nb = _notebook(spans, start=0.0, end=31.0, tags={1: ["parameters"], 2: ["injected-parameters"]})
    records = [{"timings": {"data_s": 1.0, "train_s": 10.0, "eval_s": 2.0, "write_s": 0.5, "total_s": 15.0}},
               {"timings": {"data_s": 0.5, "write_s": 0.25, "total_s": 4.0}}]  # a probe: no train/eval split
    got = stage_times(nb, records, seconds=32.5)
    cells = sum(b - a for a, b in spans)  # 0.1 + 0.1 + 0.05 + 4 + 20 + 1.5 = 25.75
    expected = {
        "kernel_start_s": 2.0,
        "imports_s": 0.1 + 0.1 + 0.05 + 4.0,   # every cell up to the first after the parameters
        "data_s": 1.5, "train_s": 10.0, "eval_s": 2.0, "write_s": 0.75,
        "run_other_s": 19.0 - 14.25,            # the runs' total less what they split out
        "cells_other_s": 21.5 - 19.0,           # the cells after the imports less the runs' total
        "papermill_s": (29.0 - 2.0) - cells,    # gaps between cells: papermill saving the notebook
        "kernel_end_s": 2.0,
        "outside_s": 1.5,
        "total_s": 32.5,
    }
    assert got == pytest.approx(expected)
    # the stages add up to the point's wall time
    assert sum(v for k, v in got.items() if k != "total_s") == pytest.approx(32.5)


def test_stage_times_without_papermill_metadata_keeps_only_the_total():
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    assert stage_times(nb, [], seconds=3.0) == {"total_s": 3.0}
    assert stage_times(nb) == {}


def test_sweep_summary_sums_stages_and_names_the_slowest():
    results = [PointResult("s", "a", "done", 10.0, stages={"kernel_start_s": 1.0, "imports_s": 3.0, "train_s": 6.0,
                                                           "total_s": 10.0}),
               PointResult("s", "b", "done", 20.0, stages={"kernel_start_s": 1.0, "imports_s": 4.0, "train_s": 15.0,
                                                           "total_s": 20.0}),
               PointResult("s", "c", "skipped")]
    summary = SweepSummary(results)
    assert summary.stage_totals() == {"kernel_start_s": 2.0, "imports_s": 7.0, "train_s": 21.0, "total_s": 30.0}
    text = summary.format()
    assert "summed over 2 executed point(s) (30.0 s" in text
    assert "kernel start 2.0, imports 7.0, training 21.0" in text
    assert "slowest stage: training 21.0 s (70%); slowest point: s/b 20.0 s" in text
    assert SweepSummary([PointResult("s", "c", "skipped")]).format_stages() == []


def test_runner_and_plots_agree_on_the_plotlyjs_variable():
    from clipdg_nb.analysis import plots

    assert point_mod.INLINE_PLOTLYJS_ENV == plots.INLINE_PLOTLYJS_ENV


def _displayed(monkeypatch, env_value):
    """What setup_notebook() then show(fig) display, with $CLIPDG_INLINE_PLOTLYJS=env_value."""
    import plotly.graph_objects as go
    from IPython import display as ipd

    from clipdg_nb.analysis import plots

    shown = []
    monkeypatch.setattr(ipd, "display", lambda *objs, **kw: shown.extend(objs))
    monkeypatch.setattr(plots, "_PLOTLYJS_SENT", False)
    if env_value is None:
        monkeypatch.delenv(plots.INLINE_PLOTLYJS_ENV, raising=False)
    else:
        monkeypatch.setenv(plots.INLINE_PLOTLYJS_ENV, env_value)
    plots.setup_notebook()
    plots.show(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    texts = [o.data if hasattr(o, "data") else o.get("text/html", "") for o in shown]
    return sum(len(t) > 1_000_000 and "plotly.js v" in t[:2000] for t in texts), texts


def test_plotlyjs_inline_outside_the_runner_and_not_under_it(monkeypatch):
    inline, _ = _displayed(monkeypatch, None)  # JupyterLab, plain nbconvert: plotly.js once
    assert inline == 1
    inline, texts = _displayed(monkeypatch, "0")  # under `clipdg run`: the figure only
    assert inline == 0 and len(texts) == 1 and "Plotly.newPlot" in texts[0] and len(texts[0]) < 100_000
