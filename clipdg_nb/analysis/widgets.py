"""The OOD failure browser: an ipywidgets UI over a predictions DataFrame.

The state and callbacks live in `FailureBrowser` itself (`set_filter`, `show`, `next`, and the
attributes `image`, `true_label`, `pred_label`, `topk`, ...), so they can be driven and tested
without a browser; `widget()` puts an ipywidgets layout on top that only calls those methods.

Predictions frame columns (see `evaluate.prediction_frame`): idx, y_true, y_pred, p_top1, optional
topk_labels / topk_probs (list columns), split, and group columns (region, year, location).
Two runs on the same images are compared with `compare_runs(a, b)`: each example becomes
`fixed` (a wrong, b right), `broken` (a right, b wrong), `both_wrong` or `both_right`.
"""
from __future__ import annotations

import html
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .comparison import B_SUFFIX, CATEGORIES, check_predictions, comparison_title, compare_runs
from .figures import split_title, variant_title
from .plots import thumbnail_png
from .tables import natural_key
from ..data import GROUP_FIELDS

_FILTERS = ("split", "groups", "true_class", "pred_class", "errors_only", "category")
ALL = "(all)"
SEARCH_FROM = 25  # class lists at least this long get a searchable box (iWildCam: 182 classes) instead of a dropdown
NO_MATCH = "no example matches these filters"


class FailureBrowser:
    """Browse predictions (or a comparison of two runs): filter, then step through examples.

    predictions: a predictions frame, or the output of `compare_runs` (then `category` filters
    and run B's label is shown too). class_names: label names in WILDS order.
    dataset / get_image: where images come from (`dataset.get_input(idx)` by default).
    Rows are ordered most confident first, so with `errors_only` the worst failures lead.
    """

    def __init__(self, predictions: pd.DataFrame, class_names: Sequence[str], dataset=None,
                 get_image: Callable[[int], Any] | None = None, run_names: Sequence[str] | None = None,
                 group_fields: Sequence[str] | None = None, errors_only: bool = True, topk: int = 5,
                 thumb_size: int = 224):
        check_predictions(predictions, "predictions")
        self.frame = predictions.reset_index(drop=True)
        self.class_names = list(class_names)
        if get_image is None and dataset is not None:
            get_image = dataset.get_input
        self.get_image = get_image
        self.comparing = "category" in self.frame.columns
        self.run_names = tuple(run_names or (("A", "B") if self.comparing else ("predicted",)))
        self.run_titles = tuple(variant_title(n) for n in self.run_names)  # 'last' -> 'last epoch'
        self.group_fields = [f for f in (group_fields or GROUP_FIELDS) if f in self.frame.columns]
        self.k, self.thumb_size = int(topk), int(thumb_size)
        self.filters: dict = {"split": None, "groups": {}, "true_class": None, "pred_class": None,
                              "errors_only": errors_only and not self.comparing, "category": None}
        self._widgets: dict = {}
        self._controls: dict = {}  # id(control) -> filter key
        self._syncing = False
        self._apply()

    # -- labels -------------------------------------------------------------------------------
    def label(self, y) -> str:
        y = int(y)
        return self.class_names[y] if 0 <= y < len(self.class_names) else f"class {y}"

    def _class_index(self, value, name: str) -> int | None:
        if value is None or value == ALL:
            return None
        if isinstance(value, str) and not value.isdigit():
            if value not in self.class_names:
                raise ValueError(f"{name}={value!r} is not a class name; see browser.class_names")
            return self.class_names.index(value)
        return int(value)

    # -- state ----------------------------------------------------------------------------------
    def set_filter(self, **changes) -> int:
        """Change some filters (None = no filter) and go to the first match; returns the match count.

        split: 'test', ...; groups: {field: value}; true_class / pred_class: index or name;
        errors_only: bool; category: fixed | broken | both_wrong | both_right (comparisons).
        """
        unknown = sorted(set(changes) - set(_FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; use {list(_FILTERS)}")
        if changes.get("category") not in (None, ALL) and not self.comparing:
            raise ValueError("category filters need a comparison of two runs (compare_runs(a, b))")
        if changes.get("category") not in (None, ALL, *CATEGORIES):
            raise ValueError(f"category={changes['category']!r}; choose one of {list(CATEGORIES)}")
        for field in (changes.get("groups") or {}):
            if field not in self.group_fields:
                raise ValueError(f"groups: {field!r} is not a group column; have {self.group_fields}")
        for key in ("true_class", "pred_class"):
            if key in changes:
                changes[key] = self._class_index(changes[key], key)
        if "groups" in changes:
            changes["groups"] = {k: v for k, v in (changes["groups"] or {}).items() if v not in (None, ALL)}
        self.filters.update({k: (None if v == ALL else v) for k, v in changes.items()})
        self._apply()
        return len(self.filtered)

    def _mask(self, skip: str | None = None) -> np.ndarray:
        """Rows passing every filter (but `skip`: the category counts use all the others)."""
        df, f = self.frame, self.filters
        mask = np.ones(len(df), dtype=bool)
        if f["split"] is not None and "split" in df.columns:
            mask &= (df["split"] == f["split"]).to_numpy()
        for field, value in f["groups"].items():
            mask &= (df[field].astype(str) == str(value)).to_numpy()
        if f["true_class"] is not None:
            mask &= (df["y_true"] == f["true_class"]).to_numpy()
        if f["pred_class"] is not None:
            mask &= (df["y_pred"] == f["pred_class"]).to_numpy()
        if f["errors_only"]:
            mask &= (df["y_pred"] != df["y_true"]).to_numpy()
        if f["category"] is not None and skip != "category":
            mask &= (df["category"] == f["category"]).to_numpy()
        return mask

    def _apply(self) -> None:
        self.filtered = self.frame[self._mask()].sort_values(["p_top1", "idx"], ascending=[False, True]).reset_index(drop=True)
        self._sync_controls()
        self.show(0) if len(self.filtered) else self._clear()

    def _clear(self) -> None:
        self.position, self.current, self.image = None, None, None
        self.true_label = self.pred_label = self.pred_label_b = None
        self.confidence = self.confidence_b = self.category = None
        self.topk, self.topk_b = [], []
        self._refresh()

    def _topk(self, row, suffix: str = "") -> list[tuple[str, float]]:
        labels, probs = row.get("topk_labels" + suffix), row.get("topk_probs" + suffix)
        if labels is None or probs is None:
            return [(self.label(row["y_pred" + suffix]), float(row["p_top1" + suffix]))]
        return [(self.label(y), float(p)) for y, p in list(zip(labels, probs))[: self.k]]

    def show(self, position: int) -> dict:
        """Go to row `position` of the filtered examples; fills image, labels, top-k; returns them."""
        n = len(self.filtered)
        if not n:
            raise IndexError("no examples match the filters; loosen them with set_filter(...)")
        if not isinstance(position, (int, np.integer)) or not -n <= position < n:
            raise IndexError(f"position {position!r} out of range: {n} example(s) match the filters")
        self.position = int(position) % n
        row = self.filtered.iloc[self.position]
        self.current = row
        self.image = self.get_image(int(row["idx"])) if self.get_image is not None else None
        self.true_label, self.pred_label = self.label(row["y_true"]), self.label(row["y_pred"])
        self.confidence = float(row["p_top1"])
        self.topk = self._topk(row)
        if self.comparing:
            self.pred_label_b, self.confidence_b = self.label(row["y_pred" + B_SUFFIX]), float(row["p_top1" + B_SUFFIX])
            self.topk_b, self.category = self._topk(row, B_SUFFIX), row["category"]
        else:
            self.pred_label_b = self.confidence_b = self.category = None
            self.topk_b = []
        self._refresh()
        return self.state()

    def next(self) -> dict:
        return self.show((self.position + 1) % len(self.filtered)) if len(self.filtered) else self.state()

    def previous(self) -> dict:
        return self.show((self.position - 1) % len(self.filtered)) if len(self.filtered) else self.state()

    def state(self) -> dict:
        """What is on screen, as plain values."""
        row = self.current
        return {"position": self.position, "count": len(self.filtered),
                "idx": None if row is None else int(row["idx"]),
                "true_label": self.true_label, "pred_label": self.pred_label, "confidence": self.confidence,
                "topk": list(self.topk), "pred_label_b": self.pred_label_b, "confidence_b": self.confidence_b,
                "topk_b": list(self.topk_b), "category": self.category,
                "groups": {} if row is None else {f: row[f] for f in self.group_fields}}

    def where(self) -> str:
        """Where the current example comes from: 'OOD test, region Asia, year 2016' (ID / OOD from its
        split, the domain from its group columns)."""
        row = self.current
        if row is None:
            return ""
        parts = [split_title(row["split"])] if "split" in row.index else []
        parts += [f"{f} {row[f]}" for f in self.group_fields]
        return ", ".join(parts)

    def describe(self) -> str:
        """One-line text of the current example (for logs and text-only reports)."""
        s = self.state()
        if s["idx"] is None:
            return f"{NO_MATCH} ({self.filter_text()})"
        text = (f"[{s['position'] + 1}/{s['count']}] #{s['idx']} ({self.where()}) true: {s['true_label']}; "
                f"{self.run_titles[0]}: {s['pred_label']} ({s['confidence']:.0%})")
        if self.comparing:
            text += f"; {self.run_titles[1]}: {s['pred_label_b']} ({s['confidence_b']:.0%}) [{s['category']}]"
        return text

    def filter_text(self) -> str:
        """The filters in force, in words (for the no-match message)."""
        f = self.filters
        parts = [f"split {split_title(f['split'])}"] if f["split"] is not None else []
        parts += [f"{k} {v}" for k, v in f["groups"].items()]
        if f["true_class"] is not None:
            parts.append(f"true class {self.label(f['true_class'])}")
        if f["pred_class"] is not None:
            parts.append(f"predicted {self.label(f['pred_class'])}")
        if f["errors_only"]:
            parts.append("errors only")
        if f["category"] is not None:
            parts.append(self.category_label(f["category"]).rsplit(" (", 1)[0])
        return ", ".join(parts) or "no filter"

    # -- options for the controls ---------------------------------------------------------------
    def options(self) -> dict:
        df = self.frame
        return {
            "split": sorted(df["split"].unique(), key=natural_key) if "split" in df.columns else [],
            "groups": {f: sorted(map(str, df[f].unique()), key=natural_key) for f in self.group_fields},
            "true_class": [self.label(y) for y in sorted(df["y_true"].unique())],
            "pred_class": [self.label(y) for y in sorted(df["y_pred"].unique())],
            "category": list(CATEGORIES) if self.comparing else [],
        }

    # -- ipywidgets layout ----------------------------------------------------------------------
    def category_counts(self) -> dict:
        """Examples per comparison category under the other filters (split, groups, classes, ...)."""
        cats = self.frame.loc[self._mask(skip="category"), "category"]
        return {ALL: len(cats), **{c: int((cats == c).sum()) for c in CATEGORIES}}

    def category_label(self, category: str) -> str:
        """A comparison category in words, with its count under the other filters: 'fixed by SWA (3)'."""
        b = self.run_titles[-1]
        words = {ALL: "all", "fixed": f"fixed by {b}", "broken": f"broken by {b}", "both_wrong": "both wrong",
                 "both_right": "both right"}
        return f"{words[category]} ({self.category_counts()[category]})"

    def _control_values(self) -> dict:
        """What each control shows for the current filters (the controls mirror the state)."""
        f = self.filters
        values = {"split": f["split"] or ALL,
                  "true_class": ALL if f["true_class"] is None else self.label(f["true_class"]),
                  "pred_class": ALL if f["pred_class"] is None else self.label(f["pred_class"]),
                  "errors_only": bool(f["errors_only"])}
        for field in self.group_fields:
            values[f"group:{field}"] = str(f["groups"].get(field, ALL))
        if self.comparing:
            values["category"] = f["category"] or ALL
        return values

    def widget(self):
        """The ipywidgets UI (built once): filter controls showing the current filters, prev/next,
        image, labels, top-k bars. A control changes its own filter only; the others are kept."""
        if self._widgets:
            return self._widgets["root"]
        import ipywidgets as W

        opts, w, values = self.options(), self._widgets, self._control_values()
        a, b = self.run_titles[0], self.run_titles[-1]
        wide = {"style": {"description_width": "initial"}, "layout": W.Layout(width="auto", margin="2px 12px 2px 0")}

        def dropdown(key, description, choices, label=None):  # label: what the menu shows for a value
            choices = [ALL, *choices]
            if values[key] not in choices:  # a filter set in code on a value the frame lacks
                choices.append(values[key])
            if key.endswith("_class") and len(choices) > SEARCH_FROM:  # type to search 182 classes
                w[key] = W.Combobox(options=choices, value=values[key], ensure_option=True, description=description,
                                    placeholder=f"type to search {len(choices) - 1} classes", **wide)
            else:
                w[key] = W.Dropdown(options=[(label(c), c) for c in choices] if label else choices, value=values[key],
                                    description=description, **wide)

        dropdown("split", "split", opts["split"], label=split_title)  # 'OOD test', as the caption says
        for field, choices in opts["groups"].items():
            dropdown(f"group:{field}", field, choices)
        dropdown("true_class", "true class", opts["true_class"])
        dropdown("pred_class", f"predicted by {a}" if self.comparing else "predicted", opts["pred_class"])
        w["errors_only"] = W.Checkbox(value=values["errors_only"], indent=False,
                                      description=f"only where {a} is wrong" if self.comparing else "errors only",
                                      **wide)
        rows = [W.HBox([w["split"], *[w[k] for k in w if k.startswith("group:")]]),
                W.HBox([w["true_class"], w["pred_class"], w["errors_only"]])]
        if self.comparing:
            w["category"] = W.ToggleButtons(options=[(self.category_label(c), c) for c in (ALL, *CATEGORIES)],
                                            value=values["category"], style={"button_width": "auto"},
                                            tooltips=["every example", f"{a} wrong, {b} right", f"{a} right, {b} wrong",
                                                      f"{a} and {b} wrong", f"{a} and {b} right"])
            w["compared"] = W.HTML(f"<b>{comparison_title(self.run_names[0], self.run_names[1])}</b>:&nbsp;")
            rows.append(W.HBox([w["compared"], w["category"]]))
        self._controls = {id(c): k for k, c in w.items() if k in values}
        for key in self._controls.values():
            w[key].observe(self._on_control, names="value")
        w["prev"], w["next"] = W.Button(description="< previous"), W.Button(description="next >")
        w["counter"] = W.Label()
        w["image"] = W.Image(format="png", width=self.thumb_size, height=self.thumb_size)
        w["info"] = W.HTML()
        w["message"] = W.HTML()  # shown in place of the image when nothing matches
        w["prev"].on_click(lambda _: self.previous())
        w["next"].on_click(lambda _: self.next())
        w["root"] = W.VBox([*rows, W.HBox([w["prev"], w["next"], w["counter"]]), w["message"],
                            W.HBox([w["image"], w["info"]])])
        self._refresh()
        return w["root"]

    def _on_control(self, change) -> None:
        if self._syncing:
            return
        key = self._controls[id(change["owner"])]
        if change["new"] == "" and key.endswith("_class"):  # the search box emptied: no class filter
            change = {**change, "new": ALL}
        elif key.endswith("_class") and change["new"] not in (ALL, *self.class_names):
            return  # a search box mid-typing (not a class yet): keep the filter
        if key.startswith("group:"):
            self.set_filter(groups={**self.filters["groups"], key.split(":", 1)[1]: change["new"]})
        else:
            self.set_filter(**{key: change["new"]})

    def _sync_controls(self) -> None:
        """Show the filters in the controls (after set_filter from code), without firing callbacks."""
        w = self._widgets
        if not w:
            return
        self._syncing = True
        try:
            for key, value in self._control_values().items():
                if key in w and w[key].value != value:
                    if hasattr(w[key], "options") and value not in [o[1] if isinstance(o, tuple) else o
                                                                   for o in w[key].options]:
                        w[key].options = [*w[key].options, value]
                    w[key].value = value
            if self.comparing and "category" in w:  # the counts follow the other filters
                labels = [(self.category_label(c), c) for c in (ALL, *CATEGORIES)]
                if list(w["category"].options) != labels:
                    current = w["category"].value
                    w["category"].options = labels  # resets the value: put it back
                    w["category"].value = current
        finally:
            self._syncing = False

    def _bars(self, topk) -> str:
        rows = "".join(
            f'<tr><td style="padding-right:6px">{label}</td><td><div style="background:#4c78a8;height:10px;'
            f'width:{max(1, round(120 * p))}px"></div></td><td>&nbsp;{p:.1%}</td></tr>' for label, p in topk)
        return f"<table>{rows}</table>"

    def _refresh(self) -> None:
        w = self._widgets
        if not w:
            return
        if self.current is None:  # no empty image (a broken-image icon): a message saying why
            w["counter"].value, w["info"].value, w["image"].value = "0 matches", "", b""
            w["image"].layout.display = "none"
            w["message"].value = (f"<p style='padding:8px;border:1px solid #ccc;background:#fafafa'><b>{NO_MATCH}</b> "
                                  f"({html.escape(self.filter_text())}); set a filter back to {ALL}.</p>")
            w["message"].layout.display = None
            return
        w["message"].value, w["message"].layout.display = "", "none"
        w["counter"].value = f"{self.position + 1} / {len(self.filtered)}"
        w["image"].value = thumbnail_png(self.image, self.thumb_size) if self.image is not None else b""
        w["image"].layout.display = None if self.image is not None else "none"
        s = self.state()
        info = (f"<b>#{s['idx']}</b> <span style='color:#666'>{html.escape(self.where())}</span><br>"
                f"<b>true</b>: {s['true_label']}<br>"
                f"<b>{self.run_titles[0]}</b>: {s['pred_label']} ({s['confidence']:.1%}){self._bars(self.topk)}")
        if self.comparing:
            info += (f"<b>{self.run_titles[1]}</b>: {s['pred_label_b']} ({s['confidence_b']:.1%}) "
                     f"<i>[{s['category']}]</i>{self._bars(self.topk_b)}")
        w["info"].value = info

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget())


def browse(predictions: pd.DataFrame, class_names: Sequence[str], dataset=None, compare_with: pd.DataFrame | None = None,
           run_names: Sequence[str] | None = None, **kwargs) -> FailureBrowser:
    """A browser over one run's predictions, or (with `compare_with`) over run A vs run B."""
    frame = compare_runs(predictions, compare_with) if compare_with is not None else predictions
    return FailureBrowser(frame, class_names, dataset=dataset, run_names=run_names, **kwargs)
