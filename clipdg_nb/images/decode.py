"""Decoding one image exactly as open_clip's eval preprocessing does (shorter side to the model's
size, bicubic, centre crop), optionally JPEG-drafted first; errors name the file and the index."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..data import dataset_spec

DEFAULT_CACHE = Path("outputs") / "cache" / "decoded"
# JPEG drafting is off by default. Each image is decoded once per machine, so drafting only shortens a
# one-time fill (2.1-3.1x at 224 px, benchmarks/bench_cache_grid.py), while its pixels (0.25-0.85/255
# away, FACTS.md) would differ from open_clip's `preprocess` in every later pass. `draft=True` (e.g. to
# `prepare_splits`) is for a full iWildCam on few cores (~200k JPEGs: 1.5-3.5 core-hours in full).
DEFAULT_DRAFT = False
DRAFT_FACTOR = 2  # draft to a shorter side >= DRAFT_FACTOR * image_size before the bicubic resize
# Part of every cache key. Bump it whenever the pixels a cache holds would change (geometry, format).
PREPROCESS = "open_clip-eval:resize-shortest-bicubic+center-crop:uint8-hwc:v2"


class ImageDecodeError(OSError):
    """An image could not be read or decoded; `path` and `index` (into the WILDS dataset) say which."""

    def __init__(self, message: str, path=None, index=None):
        super().__init__(message)
        self.path, self.index = path, index


@functools.lru_cache(maxsize=16)
def resize_crop(image_size: int) -> T.Compose:
    """open_clip's eval geometry (resize_mode 'shortest', bicubic), up to the uint8 image."""
    return T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)])


def image_names(dataset, indices) -> list[str]:
    """The files (relative to `dataset.data_dir`) WILDS's `get_input` opens: the dataset spec's rule."""
    return dataset_spec(dataset.dataset_name).image_paths(dataset, np.asarray(indices))


def image_path(dataset, idx: int) -> Path:
    return Path(dataset.data_dir) / image_names(dataset, [int(idx)])[0]


def _decode_image(path: str, image_size: int, draft: bool = False, draft_factor: float = DRAFT_FACTOR) -> np.ndarray:
    """One image file -> uint8 [H, W, 3] in open_clip's eval geometry (optionally JPEG-drafted first)."""
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            # DCT-domain downscale by 1/2, 1/4 or 1/8, keeping both sides >= the requested size
            side = int(draft_factor * image_size)
            img.draft("RGB", (side, side))
        rgb = img.convert("RGB")
    return np.array(resize_crop(image_size)(rgb), dtype=np.uint8)


def load_uint8(dataset, idx: int, image_size: int, draft: bool = False, path: str | None = None) -> np.ndarray:
    """Decode dataset[idx]'s image (the file `path` when given); errors name the file and the index."""
    idx = int(idx)
    path = str(image_path(dataset, idx)) if path is None else path
    try:
        return _decode_image(path, image_size, draft)
    except Exception as e:
        raise ImageDecodeError(f"could not decode image {path} (dataset index {idx}): {type(e).__name__}: {e}",
                               path=path, index=idx) from e
