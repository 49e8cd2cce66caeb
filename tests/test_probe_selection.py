"""The linear probe's strength is chosen on the dataset's selection metric, like every other choice:
on iWildCam F1-macro_all on id_val, not accuracy."""
from __future__ import annotations

import pytest

from clipdg_nb import methods
from clipdg_nb.config import FinetuneConfig


def test_iwildcam_probe_strength_is_chosen_on_f1_macro(synth_root, run_kwargs):
    cfg = FinetuneConfig(root_dir=str(synth_root), dataset="iwildcam", method="linear_probe",
                         probe_cs=(0.01, 1.0, 100.0), eval_splits=["id_val", "test"], **run_kwargs)
    record = methods.run(cfg, progress=False)
    selection = record["selection"]
    assert selection["split"] == "id_val" and selection["metric"] == "F1-macro_all", selection
    scores = {float(c): v for c, v in selection["val_scores"].items()}
    assert set(scores) == {0.01, 1.0, 100.0}
    chosen = scores[selection["C"]]
    assert chosen == max(scores.values())
    # the score it chose by is WILDS's F1-macro_all of the chosen probe on id_val, computed
    # independently by the evaluation of the run (not the accuracy, which differs here)
    id_val = record["metrics"]["id_val"]
    assert chosen == pytest.approx(id_val["F1-macro_all"], abs=1e-12)
    assert id_val["F1-macro_all"] != pytest.approx(id_val["acc_avg"])
