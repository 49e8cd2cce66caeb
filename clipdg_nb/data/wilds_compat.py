"""WILDS 2.0.0 on today's libraries, without touching global state.

1. FMoW's `rgb_metadata.csv` mixes ISO-8601 forms, which pandas >= 2 rejects (p-lambda/wilds#146):
   the column is normalised when the loader assigns `self.metadata` (a property on a subclass).
2. Group metrics import `torch_scatter` (no wheels for current torch) for one scatter-mean:
   `ScatterFreeAccuracy` does it with `index_add_`, used by `CompatFMoW.eval` and, for datasets on
   `standard_group_eval` (Camelyon17), `ScatterFreeGroupEval`. iWildCam's `eval` runs unmodified.

Metric names and numbers stay exactly WILDS's; only its public methods are overridden or called.
"""
from __future__ import annotations

import warnings

import pandas as pd
import torch
from wilds.common.grouper import CombinatorialGrouper
from wilds.common.metrics.all_metrics import Accuracy
from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
from wilds.datasets.fmow_dataset import FMoWDataset
from wilds.datasets.iwildcam_dataset import IWildCamDataset
from wilds.datasets.wilds_dataset import WILDSDataset


def scatter_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int):
    """Per-group mean and count; empty groups get mean 0 like `torch_scatter.scatter(reduce='mean')`."""
    values = values.float()
    counts = torch.zeros(n_groups, device=values.device).index_add_(0, groups, torch.ones_like(values))
    sums = torch.zeros(n_groups, device=values.device).index_add_(0, groups, values)
    return sums / counts.clamp(min=1), counts


class ScatterFreeAccuracy(Accuracy):
    """WILDS's `Accuracy` (name 'acc'), with group-wise averaging that needs no torch_scatter
    (`Metric.compute_group_wise` of wilds 2.0.0, the mean taken by `scatter_mean`)."""

    def compute_group_wise(self, y_pred, y_true, g, n_groups, return_dict=True):
        element_wise = self.compute_element_wise(y_pred, y_true, return_dict=False)
        group_metrics, group_counts = scatter_mean(element_wise, g, n_groups)
        worst = self.worst(group_metrics[group_counts > 0])
        if not return_dict:
            return group_metrics, group_counts, worst
        results = {}
        for i in range(n_groups):
            results[self.group_metric_field(i)] = group_metrics[i].item()
            results[self.group_count_field(i)] = group_counts[i].item()
        results[self.worst_group_metric_field] = worst.item()
        return results


def parse_fmow_timestamps(column: pd.Series) -> pd.Series:
    """Parse FMoW's mixed ISO-8601 timestamps to tz-aware UTC datetimes (pandas 1 and 2)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return column
    try:
        return pd.to_datetime(column, format="ISO8601", utc=True)
    except (TypeError, ValueError):  # pandas < 2 has no format="ISO8601" but parses mixed forms
        return pd.to_datetime(column, utc=True)


class CompatFMoW(FMoWDataset):
    """`FMoWDataset` whose metadata timestamps parse on pandas >= 2 and whose eval needs no torch_scatter."""

    @property
    def metadata(self) -> pd.DataFrame:
        return self._clipdg_metadata

    @metadata.setter
    def metadata(self, frame: pd.DataFrame) -> None:
        # FMoWDataset.__init__ assigns the raw CSV here, then calls pd.to_datetime on 'timestamp'
        # several times; parsing once, up front, makes those calls no-ops.
        if "timestamp" in frame.columns:
            frame = frame.assign(timestamp=parse_fmow_timestamps(frame["timestamp"]))
        self._clipdg_metadata = frame

    def eval(self, y_pred, y_true, metadata, prediction_fn=None):
        """FMoWDataset.eval from wilds 2.0.0, verbatim but for the scatter-free metric (and its
        groupers made here, as FMoWDataset.__init__ makes them)."""
        metric = ScatterFreeAccuracy(prediction_fn=prediction_fn)
        all_results, all_results_str = self.standard_group_eval(
            metric, CombinatorialGrouper(dataset=self, groupby_fields=["year"]), y_pred, y_true, metadata)
        region_grouper = CombinatorialGrouper(dataset=self, groupby_fields=["region"])
        region_results = metric.compute_group_wise(
            y_pred, y_true, region_grouper.metadata_to_group(metadata), region_grouper.n_groups)
        all_results[f"{metric.name}_worst_year"] = all_results.pop(metric.worst_group_metric_field)
        region_metric_list = []
        for group_idx in range(region_grouper.n_groups):
            group_str = region_grouper.group_field_str(group_idx)
            group_metric = region_results[metric.group_metric_field(group_idx)]
            group_counts = region_results[metric.group_count_field(group_idx)]
            all_results[f"{metric.name}_{group_str}"] = group_metric
            all_results[f"count_{group_str}"] = group_counts
            # WILDS ignores the 'Other' region and empty regions for the worst-region metric.
            if group_counts == 0 or "Other" in group_str:
                continue
            all_results_str += (
                f"  {region_grouper.group_str(group_idx)}  [n = {group_counts:6.0f}]:\t"
                f"{metric.name} = {group_metric:5.3f}\n")
            region_metric_list.append(group_metric)
        all_results[f"{metric.name}_worst_region"] = metric.worst(region_metric_list)
        all_results_str += f"Worst-group {metric.name}: {all_results[f'{metric.name}_worst_region']:.3f}\n"
        return all_results, all_results_str


class CompatIWildCam(IWildCamDataset):
    """iWildCam needs no fix; the subclass exists so both datasets load the same way."""


class ScatterFreeGroupEval:
    """Mixin: WILDS's `standard_group_eval` with its `Accuracy` computed group-wise without torch_scatter
    (the dataset's own `eval` runs unmodified; only the metric object it passes is swapped)."""

    @staticmethod
    def standard_group_eval(metric, grouper, y_pred, y_true, metadata, aggregate=True):
        if type(metric) is Accuracy:
            metric = ScatterFreeAccuracy(prediction_fn=metric.prediction_fn)
        return WILDSDataset.standard_group_eval(metric, grouper, y_pred, y_true, metadata, aggregate)


class CompatCamelyon17(ScatterFreeGroupEval, Camelyon17Dataset):
    """`Camelyon17Dataset` (split scheme 'official') whose per-slide eval needs no torch_scatter."""

    def __init__(self, *args, **kwargs):
        with warnings.catch_warnings():  # WILDS builds y from a read-only pandas column; nothing writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            super().__init__(*args, **kwargs)
