"""WILDS 2.0.0 on today's libraries, without touching global state.

1. FMoW's `rgb_metadata.csv` mixes ISO-8601 forms, which pandas >= 2 rejects (p-lambda/wilds#146):
   the column is normalised when the loader assigns `self.metadata` (a property on a subclass).
2. Group metrics import `torch_scatter` (no wheels for current torch) for one scatter-mean:
   `ScatterFreeAccuracy` does it with `index_add_`, swapped in by `ScatterFreeGroupEval` for the
   FMoW and Camelyon17 `eval`s. iWildCam's `eval` runs unmodified.

Metric names and numbers stay exactly WILDS's; only its public methods are overridden or called."""
from __future__ import annotations

import warnings

import pandas as pd
import torch
from wilds.common.metrics.all_metrics import Accuracy
from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
from wilds.datasets.fmow_dataset import FMoWDataset
from wilds.datasets.wilds_dataset import WILDSDataset


class ScatterFreeAccuracy(Accuracy):
    """WILDS's `Accuracy` (name 'acc'), with group-wise averaging that needs no torch_scatter
    (`Metric.compute_group_wise` of wilds 2.0.0, the per-group mean taken with `index_add_`)."""

    def compute_group_wise(self, y_pred, y_true, g, n_groups, return_dict=True):
        element_wise = self.compute_element_wise(y_pred, y_true, return_dict=False).float()
        zeros = torch.zeros(n_groups, device=g.device)
        group_counts = zeros.clone().index_add_(0, g, torch.ones_like(element_wise))
        # empty groups get mean 0, like torch_scatter.scatter(reduce='mean')
        group_metrics = zeros.index_add_(0, g, element_wise) / group_counts.clamp(min=1)
        worst = self.worst(group_metrics[group_counts > 0])
        if not return_dict:
            return group_metrics, group_counts, worst
        results = {}
        for i in range(n_groups):
            results[self.group_metric_field(i)] = group_metrics[i].item()
            results[self.group_count_field(i)] = group_counts[i].item()
        results[self.worst_group_metric_field] = worst.item()
        return results


class ScatterFreeGroupEval:
    """Mixin: the dataset's own `eval` runs unmodified; the `Accuracy` it passes to `standard_group_eval`
    becomes a `ScatterFreeAccuracy` in place (no state of its own), so a later direct call on the same
    object (FMoW's worst-region `metric.compute_group_wise`) is scatter-free too."""

    @staticmethod
    def standard_group_eval(metric, grouper, y_pred, y_true, metadata, aggregate=True):
        if type(metric) is Accuracy:
            metric.__class__ = ScatterFreeAccuracy
        return WILDSDataset.standard_group_eval(metric, grouper, y_pred, y_true, metadata, aggregate)


class CompatFMoW(ScatterFreeGroupEval, FMoWDataset):
    """`FMoWDataset` whose metadata timestamps parse on pandas >= 2 and whose eval needs no torch_scatter."""

    @property
    def metadata(self) -> pd.DataFrame:
        return self._clipdg_metadata

    @metadata.setter
    def metadata(self, frame: pd.DataFrame) -> None:
        # FMoWDataset.__init__ assigns the raw CSV here, then calls pd.to_datetime on 'timestamp'
        # several times; parsing once, up front, makes those calls no-ops.
        if "timestamp" in frame.columns:
            frame = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], format="ISO8601", utc=True))
        self._clipdg_metadata = frame


class CompatCamelyon17(ScatterFreeGroupEval, Camelyon17Dataset):
    """`Camelyon17Dataset` (split scheme 'official') whose per-slide eval needs no torch_scatter."""

    def __init__(self, *args, **kwargs):
        with warnings.catch_warnings():  # WILDS builds y from a read-only pandas column; nothing writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            super().__init__(*args, **kwargs)
