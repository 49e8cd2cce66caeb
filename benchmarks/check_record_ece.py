import json, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from torchmetrics.functional.classification import multiclass_calibration_error as mce
worst=0; worst_edge=0; n=0; n_edge=0
for rec in sorted(Path(sys.argv[1]).rglob("result.json")):
    r=json.loads(rec.read_text()); run=rec.parent
    if "calibration" not in r: continue
    head=r["selection"].get("variant")
    for variant, per in r["calibration"].items():
        base = run if variant == head else run / "variants" / variant
        for split, c in per.items():
            p = base / "predictions" / f"{split}.parquet"
            if not p.is_file() or c.get("ece") is None: continue
            df = pd.read_parquet(p)
            conf = torch.tensor(df["p_top1"].to_numpy(np.float64)); y = torch.tensor(df["y_true"].to_numpy()); yp = torch.tensor(df["y_pred"].to_numpy())
            k = int(max(y.max(), yp.max())) + 2
            probs = torch.zeros(len(df), k, dtype=torch.float64); probs[torch.arange(len(df)), yp] = conf
            tm = float(mce(probs, y, num_classes=k, n_bins=15, norm="l1"))
            edge = bool(((conf * 15) == torch.round(conf * 15)).any())
            d = abs(tm - c["ece"]); n += 1
            if edge: n_edge += 1; worst_edge = max(worst_edge, d)
            else: worst = max(worst, d)
print(f"{n} figures: {n_edge} with a confidence exactly on a bin edge (max diff {worst_edge:.2e}); the rest max diff {worst:.2e}")
# the worst case in detail
best=None
for rec in sorted(Path(sys.argv[1]).rglob("result.json")):
    r=json.loads(rec.read_text()); run=rec.parent
    if "calibration" not in r: continue
    head=r["selection"].get("variant")
    for variant, per in r["calibration"].items():
        base = run if variant == head else run / "variants" / variant
        for split, c in per.items():
            p = base / "predictions" / f"{split}.parquet"
            if not p.is_file() or c.get("ece") is None: continue
            df = pd.read_parquet(p)
            conf = torch.tensor(df["p_top1"].to_numpy(np.float64)); y = torch.tensor(df["y_true"].to_numpy()); yp = torch.tensor(df["y_pred"].to_numpy())
            k = int(max(y.max(), yp.max())) + 2
            probs = torch.zeros(len(df), k, dtype=torch.float64); probs[torch.arange(len(df)), yp] = conf
            tm = float(mce(probs, y, num_classes=k, n_bins=15, norm="l1"))
            tm_am = (probs.argmax(1) != yp).sum().item()
            d = abs(tm - c["ece"])
            if best is None or d > best[0]: best=(d, str(p), tm, c["ece"], tm_am, len(df), float(conf.min()), k)
print(best)
