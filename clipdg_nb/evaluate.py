"""Evaluation: batched prediction, WILDS's own metrics (exactly `dataset.eval(...)`'s), prediction
tables, calibration."""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .data import dataset_spec, group_labels, metadata_column
from .devices import autocast

TOP_K = 5


def wilds_metrics(dataset, indices, y_pred) -> dict[str, float]:
    """`dataset.eval` on predicted labels for the given full-dataset indices, as plain floats."""
    indices = np.array(indices, dtype=np.int64)  # a writable copy (parquet columns are read-only)
    y_true = np.asarray(dataset.y_array)[indices]
    results, _ = dataset.eval(torch.as_tensor(np.array(y_pred, dtype=np.int64)), torch.as_tensor(y_true),
                              dataset.metadata_array[torch.as_tensor(indices)])
    return {k: float(v) for k, v in results.items()}


def image_batches(images: Dataset, batch_size: int, num_workers: int, device: torch.device):
    """Batches of (uint8 images, labels, idx). A decoded cache without augmentation is sliced
    directly (one memmap read per batch), ~1000x faster than assembling items one by one."""
    from .images import ArrayImages
    if isinstance(images, ArrayImages):
        return ((torch.from_numpy(np.array(images.images[i:i + batch_size])), None, None)  # a writable copy
                for i in range(0, len(images), batch_size))
    return DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: Dataset, normalize, device: torch.device,
                   batch_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """Logits [N, C] (float32, CPU) of a model over a dataset of (uint8 image, label, idx) items."""
    was_training = model.training
    model.eval()
    # A trainable-text classifier embeds its prompts once for the whole pass, not once per batch.
    cache = model.cached_text_features() if hasattr(model, "cached_text_features") else nullcontext()
    out = []
    try:
        with cache, autocast(device, precision):
            for x, _, _ in image_batches(images, batch_size, 0, device):
                out.append(model(normalize(x.to(device, non_blocking=True))).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def top_classes(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The `k` best classes per row of scores [N, C], best first: the one rule by which a class is predicted
    everywhere. Ties go to the lowest class on any device (a stable sort; `topk` breaks them arbitrarily).
    Rank the logits, not their softmax: float32 can round two logits to one probability."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def prediction_frame(dataset, indices, logits: torch.Tensor, split: str, k: int = TOP_K) -> pd.DataFrame:
    """The predictions contract: idx, y_true, y_pred, p_top1, p_true, top-k labels / probs, group fields."""
    indices = np.asarray(indices, dtype=np.int64)
    y_true = np.asarray(dataset.y_array)[indices].astype(np.int64)
    probs = torch.softmax(logits.float(), dim=1)
    top_l = top_classes(logits, min(k, probs.shape[1]))
    top_p = probs.gather(1, top_l)
    frame = pd.DataFrame({
        "idx": indices, "y_true": y_true,
        "y_pred": top_l[:, 0].numpy().astype(np.int64),
        "p_top1": top_p[:, 0].numpy().astype(np.float64),
        "p_true": probs[torch.arange(len(indices)), torch.from_numpy(y_true)].numpy(),
        "topk_labels": list(top_l.numpy().astype(np.int64)),
        "topk_probs": list(top_p.numpy().astype(np.float64)),
        "split": split,
    })
    for field in dataset_spec(dataset.dataset_name).eval_groups:
        frame[field] = group_labels(dataset, field, metadata_column(dataset, field)[indices])
    return frame


def evaluate_logits(dataset, indices, logits: torch.Tensor, split: str):
    """(WILDS metrics, prediction frame) for one split."""
    frame = prediction_frame(dataset, indices, logits, split)
    return wilds_metrics(dataset, indices, frame["y_pred"].to_numpy()), frame


# ---------------------------------------------------------------------------------------------
# Calibration: record["calibration"][variant][split] holds `<figure>` and `<figure>_ts` (of logits /
# temperature) for each figure of `CALIBRATION`, `temperature` and `temperature_split`.
# ---------------------------------------------------------------------------------------------

CALIBRATION_BINS = 15
TEMPERATURE_BOUNDS = (1e-2, 1e2)  # a fitted T at either end means the split wants a more extreme one


def _checked(values, y, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C] float64 logits or probabilities and their N labels, checked: not empty, finite, in range."""
    x = torch.as_tensor(values).detach().cpu().to(torch.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"{what} must be a non-empty [N, C] array with C >= 2 classes, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} holds NaN or infinite values; calibration of such predictions means nothing")
    y = torch.as_tensor(np.asarray(y)).long().reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"y has {len(y)} labels but there are {len(x)} rows of predictions; pass one label per row")
    if int(y.min()) < 0 or int(y.max()) >= x.shape[1]:
        raise ValueError(f"y holds labels outside [0, {x.shape[1]}) for predictions over {x.shape[1]} classes")
    return x, y


def confidence_bins(conf: torch.Tensor, n_bins: int = CALIBRATION_BINS) -> torch.Tensor:
    """The bin of each top-1 confidence among `n_bins` equal-width bins ((b-1)/M, b/M], the one binning
    of the ECE and of the reliability diagram (`analysis.weight_averaging.reliability_bins`)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} must be a positive integer (the study uses {CALIBRATION_BINS})")
    # ceil(conf * M) - 1, with conf = 0 (impossible for a top-1) in bin 0
    return (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)


def expected_calibration_error(probs_or_logits, y, n_bins: int = CALIBRATION_BINS, *, kind: str = "auto") -> float:
    """ECE of the top-1 prediction (Guo et al. 2017) over `confidence_bins`. `kind`: 'logits' (softmax in
    float64: confident logits do not saturate to 1.0 early), 'probs', or 'auto' (rows >= 0 summing to 1
    are probabilities). torchmetrics' `MulticlassCalibrationError(norm='l1')` agrees except for a
    confidence exactly on a bin edge (its bins are [lo, hi), and 1.0 gets a bin of its own)."""
    if kind not in ("auto", "probs", "logits"):
        raise ValueError(f"kind={kind!r} must be 'auto', 'probs' or 'logits'")
    x, y = _checked(probs_or_logits, y, "probs_or_logits")
    is_probs = bool((x >= 0).all() and torch.allclose(x.sum(dim=1), torch.ones(len(x), dtype=x.dtype), atol=1e-4))
    if kind == "probs" and not is_probs:
        raise ValueError("kind='probs' but the rows are not non-negative with sum 1; pass kind='logits'")
    probs = x if kind == "probs" or (kind == "auto" and is_probs) else torch.softmax(x, dim=1)
    pred = top_classes(x)[:, 0]  # the class the saved predictions and the metrics have
    conf = probs[torch.arange(len(x)), pred]
    correct = (pred == y).to(torch.float64)
    bins = confidence_bins(conf, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(conf))
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct - conf)
    # |B_b|/N * |acc_b - conf_b| = |sum over the bin of (correct - conf)| / N
    return float(gap.abs().sum() / count.sum())


def negative_log_likelihood(logits, y) -> float:
    """Mean cross-entropy of the true class, `-mean log softmax(logits)[y]` (in float64)."""
    x, y = _checked(logits, y, "logits")
    return float(torch.nn.functional.cross_entropy(x, y))


def brier_score(logits, y) -> float:
    """Mean over rows of `sum_c (p_c - [c == y])^2` of the softmax probabilities (Brier 1950), in [0, 2]."""
    x, y = _checked(logits, y, "logits")
    return float((torch.softmax(x, dim=1) - torch.nn.functional.one_hot(y, x.shape[1])).pow(2).sum(dim=1).mean())


class Figure(NamedTuple):
    """A calibration figure (lower is better), recorded and shown for every entry of `CALIBRATION`."""
    of_logits: Callable  # (logits [N, C], labels) -> float
    # (saved predictions) -> float, for records made before the figure; None: they cannot give it
    from_predictions: Callable | None = None


CALIBRATION: dict[str, Figure] = {
    "ece": Figure(lambda x, y: expected_calibration_error(x, y, kind="logits")),
    "nll": Figure(negative_log_likelihood, lambda frame: float(-np.log(frame["p_true"].astype(float)).mean())),
    "brier": Figure(brier_score),
}
CALIBRATION_FIELDS = tuple(q for name in CALIBRATION for q in (name, f"{name}_ts"))  # as the model is, and at T


def fit_temperature(logits, y, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T > 0 minimising `negative_log_likelihood(logits / T, y)` (Guo et al. 2017), by
    a bounded Brent search on log T (NLL is convex in 1/T: one minimum), never worse than T = 1. A T at
    a bound comes with a warning (e.g. every prediction right: the NLL keeps falling as T -> 0)."""
    from scipy.optimize import minimize_scalar
    lo, hi = (float(b) for b in bounds)
    if not 0 < lo < 1 < hi:
        raise ValueError(f"bounds={bounds!r} must satisfy 0 < low < 1 < high (T = 1 is the model as it stands)")
    x, y = _checked(logits, y, "logits")

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(x / np.exp(log_t), y))

    ends = np.log(lo), np.log(hi)
    found = float(minimize_scalar(nll, bounds=ends, method="bounded", options={"xatol": 1e-7}).x)
    at_end = min(ends, key=nll)
    if nll(found) < nll(at_end):  # an interior minimum: never worse than T = 1
        log_t = found if nll(found) <= nll(0.0) else 0.0
    elif nll(at_end) < nll(0.0):  # still falling at a bound (or flat there in float64): report the bound
        log_t = at_end
        warnings.warn(f"fitted temperature {np.exp(at_end):.3g} sits at the bound of {bounds}: the split's NLL "
                      "keeps falling beyond it (e.g. every prediction right, or none better than chance); "
                      "ECE/NLL at T are at the bound", stacklevel=2)
    else:  # the temperature changes nothing (e.g. every row's logits equal)
        log_t = 0.0
    return float(np.exp(log_t))


def calibration_metrics(logits_by_split, y_by_split, fit_split: str | None = "id_val") -> dict[str, dict]:
    """Per split: each figure of CALIBRATION of the logits, and as `<name>_ts` of logits / T with one T
    fitted on `fit_split` (None: no validation split evaluated, the temperature fields are None)."""
    missing = set(logits_by_split) ^ set(y_by_split)
    if missing:
        raise ValueError(f"logits_by_split and y_by_split must name the same splits; they differ in {sorted(missing)}")
    if fit_split is not None and fit_split not in logits_by_split:
        raise ValueError(f"fit_split={fit_split!r} is not among the splits given ({sorted(logits_by_split)}); "
                         "fit the temperature on an evaluated validation split, or pass fit_split=None")
    t = None if fit_split is None else fit_temperature(logits_by_split[fit_split], y_by_split[fit_split])
    out = {}
    for split, logits in logits_by_split.items():
        y = y_by_split[split]
        scaled = None if t is None else torch.as_tensor(logits).double() / t
        out[split] = {}
        for name, figure in CALIBRATION.items():
            out[split][name] = figure.of_logits(logits, y)
            out[split][f"{name}_ts"] = None if t is None else figure.of_logits(scaled, y)
        out[split].update(temperature=t, temperature_split=fit_split)
    return out


def temperature_split(splits, select_split: str | None) -> str | None:
    """Where a run's temperature is fitted: id_val when evaluated, else the run's selection split
    when evaluated, else nowhere (None): never a test split."""
    return next((s for s in ("id_val", select_split) if s is not None and s in splits and "test" not in s), None)


def calibration_record(logits_by_variant, y_by_split, select_split: str | None) -> dict:
    """`record["calibration"]`: {variant: {split: calibration_metrics(...)}} for every weight variant
    and evaluated split, each variant with its own temperature, fitted on `temperature_split(...)`."""
    out = {}
    for variant, per_split in logits_by_variant.items():
        fit = temperature_split(per_split, select_split)
        out[variant] = calibration_metrics(per_split, {s: y_by_split[s] for s in per_split}, fit_split=fit)
    return out
