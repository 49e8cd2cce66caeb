"""Decoding one image exactly as open_clip's eval preprocessing does (shorter side to the model's
size, bicubic, centre crop), optionally JPEG-drafted first; errors name the file and the index."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..data import DATASETS

DEFAULT_CACHE = Path("outputs") / "cache" / "decoded"

# JPEG draft decoding (see `SplitCache`) is off by default. Measured with
# benchmarks/bench_cache_grid.py on synthetic 1920x1080 JPEGs at 224 px, one thread: drafting to a
# shorter side >= 2 x 224 decoded 2.1-2.3x faster than a full decode and changed the resized pixels by
# 0.25/255 on average (>= 1 x 224: 2.8-3.1x, 0.51/255); FACTS.md has 2.4-3x and 0.55-0.85/255 on other
# JPEGs. Now that each image is decoded once per machine, the speed-up only shortens a one-time fill,
# while the difference would stay in every training and evaluation pass and make our pixels differ
# from open_clip's `preprocess` (what the reference numbers used). So exactness wins; pass
# `draft=True` (e.g. to `prepare_splits`) where the one-time decode of a full iWildCam is too slow
# (~200k JPEGs: about 1.5-3.5 core-hours in full).
DEFAULT_DRAFT = False
DRAFT_FACTOR = 2  # draft to a shorter side >= DRAFT_FACTOR * image_size before the bicubic resize
# Part of every cache key. Bump it whenever the pixels a cache holds would change (geometry, format).
PREPROCESS = "open_clip-eval:resize-shortest-bicubic+center-crop:uint8-hwc:v2"


class ImageDecodeError(OSError):
    """An image could not be read or decoded; `path` and `index` (into the WILDS dataset) say which."""

    def __init__(self, message: str, path=None, index=None):
        super().__init__(message)
        self.path, self.index = path, index


def resize_crop(image_size: int) -> T.Compose:
    """open_clip's eval geometry (resize_mode 'shortest', bicubic), up to the uint8 image."""
    return T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)])


@functools.lru_cache(maxsize=16)
def _geometry(image_size: int) -> T.Compose:
    return resize_crop(image_size)


# ---------------------------------------------------------------------------------------------
# Where the images are, and decoding one
# ---------------------------------------------------------------------------------------------

def relative_names(dataset, indices: np.ndarray) -> list[str] | None:
    """Paths (relative to `dataset.data_dir`) the WILDS loader reads for these indices (the dataset
    spec's image path rule), or None when the dataset is not a registered one."""
    spec = DATASETS.get(getattr(dataset, "dataset_name", None))
    return None if spec is None else spec.image_paths(dataset, indices)


def image_path(dataset, idx: int) -> Path:
    """The file WILDS's `get_input(idx)` opens, for every registered dataset."""
    names = relative_names(dataset, np.asarray([int(idx)]))
    if names is None:
        raise ValueError(f"no image_path for dataset {getattr(dataset, 'dataset_name', type(dataset).__name__)!r}: "
                         f"only {', '.join(DATASETS)} are known")
    return Path(dataset.data_dir) / names[0]


def _decode_image(path: str, image_size: int, draft: bool = False, draft_factor: float = DRAFT_FACTOR) -> np.ndarray:
    """One image file -> uint8 [H, W, 3] in open_clip's eval geometry (optionally JPEG-drafted first)."""
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            # DCT-domain downscale by 1/2, 1/4 or 1/8, keeping both sides >= the requested size
            side = int(draft_factor * image_size)
            img.draft("RGB", (side, side))
        rgb = img.convert("RGB")
    return np.array(_geometry(image_size)(rgb), dtype=np.uint8)


def load_uint8(dataset, idx: int, image_size: int, draft: bool = False, path: str | None = None) -> np.ndarray:
    """Decode dataset[idx]'s image; errors name the file and the index."""
    idx = int(idx)
    if path is None:
        names = relative_names(dataset, np.asarray([idx]))
        path = None if names is None else os.path.join(dataset.data_dir, names[0])
    try:
        if path is None:  # a dataset we know nothing about: its own loader, no draft
            return np.array(_geometry(image_size)(dataset.get_input(idx).convert("RGB")), dtype=np.uint8)
        return _decode_image(path, image_size, draft)
    except Exception as e:
        raise ImageDecodeError(f"could not decode image {path or '(dataset.get_input)'} (dataset index {idx}): "
                               f"{type(e).__name__}: {e}", path=path, index=idx) from e
