"""The failure browser driven headless: filters, the shown image and labels, two-run comparisons."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipdg_nb.analysis.comparison import category_counts, compare_runs
from clipdg_nb.analysis.widgets import ALL, FailureBrowser, browse

CLASSES = ["airport", "barn", "crater", "dam"]


class FakeDataset:
    """get_input(idx) gives a 4x4 image whose red channel is the idx: the shown image is checkable."""

    def __init__(self):
        self.calls = []

    def get_input(self, idx):
        self.calls.append(idx)
        return Image.fromarray(np.full((4, 4, 3), (idx, 0, 0), dtype=np.uint8))


def predictions(y_pred, p_top1, seed=0):
    n = len(y_pred)
    rng = np.random.default_rng(seed)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    second = (y_pred + 1) % 4
    return pd.DataFrame({
        "idx": np.arange(10, 10 + n, dtype=np.int64),
        "y_true": np.array([0, 1, 2, 3, 0, 1, 2, 3][:n], dtype=np.int64),
        "y_pred": y_pred, "p_top1": np.asarray(p_top1, dtype=float),
        "topk_labels": [np.array([a, b]) for a, b in zip(y_pred, second)],
        "topk_probs": [np.array([p, (1 - p) * rng.uniform(0.5, 1)]) for p in p_top1],
        "split": ["val"] * 4 + ["test"] * 4,
        "region": ["Asia", "Europe", "Asia", "Africa", "Asia", "Europe", "Africa", "Africa"][:n],
    })


A = predictions([0, 2, 2, 0, 1, 1, 3, 0], [0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.85, 0.4])  # wrong: 11, 13, 14, 16, 17
B = predictions([0, 1, 0, 0, 1, 1, 2, 3], [0.6, 0.7, 0.8, 0.9, 0.5, 0.6, 0.7, 0.8], seed=1)  # wrong: 12, 13, 14


def red(image):
    return int(np.asarray(image)[0, 0, 0])


def test_filters_show_the_right_image_and_labels():
    ds = FakeDataset()
    b = FailureBrowser(A, CLASSES, dataset=ds)
    assert list(b.filtered["idx"]) == [14, 16, 11, 13, 17]  # errors only, most confident first
    assert b.set_filter(split="test") == 3
    assert b.state()["idx"] == 14 and red(b.image) == 14
    assert (b.true_label, b.pred_label, b.confidence) == ("airport", "barn", 0.95)
    assert b.topk[0] == ("barn", 0.95) and b.topk[1][0] == "crater"
    b.next()
    assert b.state()["idx"] == 16 and red(b.image) == 16 and b.pred_label == "dam" and b.true_label == "crater"
    b.previous()
    assert b.state()["idx"] == 14
    assert b.set_filter(groups={"region": "Africa"}, true_class="dam") == 1
    assert b.state()["idx"] == 17 and b.state()["groups"] == {"region": "Africa"}
    assert b.set_filter(split=None, groups={}, true_class=None, pred_class="crater") == 1
    assert b.state()["idx"] == 11 and "true: barn" in b.describe()
    assert b.set_filter(pred_class=None, errors_only=False) == 8
    assert b.set_filter(true_class="crater", pred_class="airport") == 0
    assert b.image is None and b.state()["idx"] is None
    with pytest.raises(IndexError):
        b.show(0)
    with pytest.raises(ValueError, match="unknown filter"):
        b.set_filter(colour="red")
    with pytest.raises(ValueError, match="comparison"):
        b.set_filter(category="fixed")
    with pytest.raises(ValueError, match="not a class name"):
        b.set_filter(true_class="castle")


def test_two_run_comparison_categories():
    comp = compare_runs(A, B)
    cats = dict(zip(comp["idx"], comp["category"]))
    assert [i for i, c in cats.items() if c == "fixed"] == [11, 16, 17]  # A wrong, B right
    assert [i for i, c in cats.items() if c == "broken"] == [12]
    assert [i for i, c in cats.items() if c == "both_wrong"] == [13, 14]
    assert category_counts(comp).to_dict() == {"fixed": 3, "broken": 1, "both_wrong": 2, "both_right": 2}

    b = browse(A, CLASSES, dataset=FakeDataset(), compare_with=B, run_names=("last", "swa"))
    assert b.set_filter(category="fixed", split="test") == 2
    s = b.state()
    assert s["idx"] == 16 and red(b.image) == 16 and s["category"] == "fixed"
    assert (s["true_label"], s["pred_label"], s["pred_label_b"]) == ("crater", "dam", "crater")
    assert "SWA: crater" in b.describe() and b.topk_b[0] == ("crater", 0.7)
    with pytest.raises(ValueError, match="share no examples"):
        compare_runs(A, B.assign(idx=B["idx"] + 100))


def test_widget_callbacks_headless():
    ds = FakeDataset()
    b = FailureBrowser(A, CLASSES, dataset=ds, thumb_size=32)
    root = b.widget()
    w = b._widgets
    assert root is b.widget()  # built once
    w["split"].value = "val"  # an ipywidgets change fires the observer as a click would
    assert b.state()["count"] == 2 and b.state()["idx"] == 11
    w["next"].click()
    assert b.state()["idx"] == 13 and w["counter"].value == "2 / 2"
    shown = Image.open(io.BytesIO(w["image"].value))
    assert shown.size == (32, 32) and shown.getpixel((0, 0))[0] == 13
    assert "dam" in w["info"].value and "airport" in w["info"].value
    w["true_class"].value = "barn"
    assert b.state()["idx"] == 11 and "crater" in w["info"].value
    w["errors_only"].value = False
    w["true_class"].value = "(all)"
    assert b.state()["count"] == 4


def shown_red(b):
    return Image.open(io.BytesIO(b._widgets["image"].value)).getpixel((0, 0))[0]


def test_controls_show_the_filters_set_in_code():
    b = FailureBrowser(A, CLASSES, dataset=FakeDataset(), thumb_size=16)
    b.set_filter(split="test", true_class="crater")  # as a notebook does before displaying the browser
    b.widget()
    w = b._widgets
    assert (w["split"].value, w["true_class"].value, w["errors_only"].value) == ("test", "crater", True)
    assert b.state()["idx"] == 16 and shown_red(b) == 16
    b.set_filter(split="val", true_class=None)  # from code again, after the widget was built
    assert (w["split"].value, w["true_class"].value) == ("val", ALL)
    assert b.state()["count"] == 2 and shown_red(b) == 11


def test_comparison_controls_keep_each_other_and_say_what_is_compared():
    b = browse(A, CLASSES, dataset=FakeDataset(), compare_with=B, run_names=("last", "swa"), thumb_size=16)
    assert b.set_filter(category="fixed") == 3
    b.widget()
    w = b._widgets
    assert w["category"].value == "fixed" and w["split"].value == ALL  # the toggle shows the filter
    assert [b.state()["idx"], shown_red(b)] == [16, 16]
    w["group:region"].value = "Africa"  # changing the region keeps the category
    assert b.filters["category"] == "fixed" and w["category"].value == "fixed"
    assert b.state()["count"] == 2 and list(b.filtered["idx"]) == [16, 17]
    w["split"].value = "val"  # ... and the split keeps both
    assert b.filters["category"] == "fixed" and b.filters["groups"] == {"region": "Africa"}
    assert b.state()["count"] == 0 and w["counter"].value == "0 matches"
    w["split"].value = "test"
    w["next"].click()
    assert b.state()["idx"] == 17 and shown_red(b) == 17
    w["group:region"].value = ALL
    w["category"].value = "both_wrong"  # a click on a toggle keeps split and region
    assert b.filters["split"] == "test" and b.state()["idx"] == 14 and shown_red(b) == 14
    assert "<b>last epoch</b>" in w["info"].value and "<b>SWA</b>" in w["info"].value
    assert "SWA: " in b.describe() and "[both_wrong]" in b.describe()
    b.set_filter(category="broken")  # from code: the toggle follows
    assert w["category"].value == "broken" and b.state()["count"] == 0

    # labels name the variants in words, and no two controls or buttons share a label
    assert "last epoch → SWA" in w["compared"].value
    labels = [label for label, _ in w["category"].options]  # counted on the OOD test split, the filter in force
    assert labels == ["all (4)", "fixed by SWA (2)", "broken by SWA (0)", "both wrong (1)", "both right (1)"]
    descriptions = [w[k].description for k in ("split", "group:region", "true_class", "pred_class", "errors_only")]
    assert len(set(descriptions)) == len(descriptions) and "predicted by last epoch" in descriptions


def test_comparison_title_and_variant_names():
    from clipdg_nb.analysis.comparison import comparison_title

    assert comparison_title("last", "swa") == "last epoch → SWA"
    assert comparison_title("best", "wise_ft_0.5") == "best epoch → WiSE-FT α=0.5"


def test_caption_says_id_or_ood_and_the_domain():
    frame = A.assign(split=["id_test"] * 4 + ["test"] * 4)
    b = FailureBrowser(frame, CLASSES, dataset=FakeDataset(), thumb_size=16)
    b.widget()
    b.set_filter(split="id_test")
    assert b.where() == "ID test, region Europe" and "(ID test, region Europe)" in b.describe()
    assert "ID test, region Europe" in b._widgets["info"].value
    b.set_filter(split="test")
    assert b.state()["idx"] == 14 and b.where() == "OOD test, region Asia"
    assert "OOD test, region Asia" in b._widgets["info"].value
    menu = b._widgets["split"]  # the split menu says what the caption says, and still filters by the split's name
    assert [label for label, _ in menu.options] == [ALL, "ID test", "OOD test"] and menu.label == "OOD test" and menu.value == "test"
    menu.label = "ID test"
    assert b.filters["split"] == "id_test" and b.where() == "ID test, region Europe"


def test_group_values_sort_as_numbers():
    frame = A.drop(columns="region").assign(location=["10", "2", "0", "1", "10", "33", "2", "9"])
    b = FailureBrowser(frame, CLASSES, dataset=FakeDataset(), thumb_size=16)
    assert b.options()["groups"]["location"] == ["0", "1", "2", "9", "10", "33"]  # not 0, 1, 10, 2, 33, 9
    b.widget()
    assert list(b._widgets["group:location"].options) == [ALL, "0", "1", "2", "9", "10", "33"]
    assert b.set_filter(groups={"location": 10}) == 1 and b.set_filter(errors_only=False, groups={"location": "10"}) == 2


def test_no_match_shows_a_message_not_an_empty_image():
    b = FailureBrowser(A, CLASSES, dataset=FakeDataset(), thumb_size=16)
    b.widget()
    w = b._widgets
    assert w["image"].layout.display is None and w["message"].layout.display == "none" and shown_red(b) == 14
    w["true_class"].value = "dam"
    w["pred_class"].value = "barn"  # dam predicted as barn: none
    assert b.state()["count"] == 0 and w["image"].value == b"" and w["image"].layout.display == "none"
    assert w["message"].layout.display is None and "no example matches these filters" in w["message"].value
    assert "true class dam, predicted barn, errors only" in w["message"].value
    assert b.describe().startswith("no example matches these filters (true class dam")
    w["pred_class"].value = ALL  # loosened: the image is back and the message gone
    assert b.state()["idx"] == 13 and w["image"].layout.display is None and w["message"].layout.display == "none"
    assert shown_red(b) == 13


def test_long_class_lists_get_a_search_box():
    import ipywidgets as W

    names = [f"species_{i:03d}" for i in range(182)]  # iWildCam-sized
    n = 364
    frame = pd.DataFrame({"idx": np.arange(n), "y_true": np.arange(n) % 182, "y_pred": (np.arange(n) * 7 + 1) % 182,
                          "p_top1": np.linspace(0.9, 0.1, n), "split": "test"})
    b = FailureBrowser(frame, names, get_image=lambda i: np.zeros((4, 4, 3), np.uint8), thumb_size=16)
    b.widget()
    w = b._widgets
    assert isinstance(w["true_class"], W.Combobox) and w["true_class"].ensure_option
    assert len(w["true_class"].options) == 183 and w["true_class"].value == ALL
    w["true_class"].value = "species_15"  # typed so far: not a class, the filter stays
    assert b.filters["true_class"] is None and b.state()["count"] == n
    w["true_class"].value = "species_150"
    assert b.filters["true_class"] == 150 and list(b.filtered["idx"]) == [150, 332]
    w["true_class"].value = ""  # the box cleared: every class again
    assert b.filters["true_class"] is None and b.state()["count"] == n
    b.set_filter(pred_class="species_001")  # from code: the box shows it
    assert w["pred_class"].value == "species_001" and list(b.filtered["idx"]) == list(range(0, n, 26))  # 7i+1 = 1 mod 182
    small = FailureBrowser(A, CLASSES, dataset=FakeDataset())
    small.widget()
    assert isinstance(small._widgets["true_class"], W.Dropdown)  # four classes: a dropdown is enough


def test_category_counts_follow_the_other_filters():
    b = browse(A, CLASSES, dataset=FakeDataset(), compare_with=B, run_names=("last", "swa"), thumb_size=16)
    b.widget()
    w = b._widgets
    labels = lambda: [label for label, _ in w["category"].options]
    assert labels() == ["all (8)", "fixed by SWA (3)", "broken by SWA (1)", "both wrong (2)", "both right (2)"]
    w["category"].value = "fixed"
    w["group:region"].value = "Africa"  # 13 both wrong, 16 fixed, 17 fixed
    assert labels() == ["all (3)", "fixed by SWA (2)", "broken by SWA (0)", "both wrong (1)", "both right (0)"]
    assert w["category"].value == "fixed" and b.state()["count"] == 2  # relabelling kept the choice
    assert b.category_counts() == {ALL: 3, "fixed": 2, "broken": 0, "both_wrong": 1, "both_right": 0}
