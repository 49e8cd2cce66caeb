"""Every ECE in a folder's run records against the ECE of the run's saved predictions, computed
independently by torchmetrics (issue 26: "every ECE in the records equals the ECE of the saved
predictions and torchmetrics' on the same predictions").

    python tools/check_record_ece.py outputs/runs

For each (run, weight variant, split) with a calibration record and saved predictions, torchmetrics'
`multiclass_calibration_error` (15 bins, l1) is given probability rows that hold the saved top-1
probability at the saved predicted class and 0 elsewhere, so its confidence and its predicted class are
exactly the saved ones. Prints the count and the largest difference; exits 1 above 1e-6.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import multiclass_calibration_error


def figures(folder: Path):
    for path in sorted(folder.rglob("result.json")):
        record, run = json.loads(path.read_text()), path.parent
        headline = (record.get("selection") or {}).get("variant")
        for variant, per_split in (record.get("calibration") or {}).items():
            base = run if variant == headline else run / "variants" / variant
            for split, values in per_split.items():
                predictions = base / "predictions" / f"{split}.parquet"
                if predictions.is_file() and values.get("ece") is not None:
                    yield predictions, values["ece"]


def main(folder: str) -> int:
    worst, where, n = 0.0, None, 0
    for path, ece in figures(Path(folder)):
        df = pd.read_parquet(path)
        y, y_pred = torch.tensor(df["y_true"].to_numpy()), torch.tensor(df["y_pred"].to_numpy())
        k = int(max(y.max(), y_pred.max())) + 1
        probs = torch.zeros(len(df), k, dtype=torch.float64)
        probs[torch.arange(len(df)), y_pred] = torch.tensor(df["p_top1"].to_numpy(np.float64))
        diff = abs(float(multiclass_calibration_error(probs, y, num_classes=k, n_bins=15, norm="l1")) - ece)
        n += 1
        if diff > worst:
            worst, where = diff, path
    print(f"{n} ECE figures (run, variant, split); max |record - torchmetrics on the saved predictions| = "
          f"{worst:.1e}" + (f" ({where})" if where else ""))
    return int(worst > 1e-6 or n == 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "outputs/runs"))
