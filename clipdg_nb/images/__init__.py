"""Images to tensors: each image decoded once into a per-split uint8 cache (`cache.py`, exact
open_clip eval geometry from `decode.py`), then normalised and augmented as tensors (`tensors.py`)."""
from .cache import SplitCache  # noqa: F401
from .views import CachedImages, cached_images, decode_split, prepare_splits  # noqa: F401
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, ImageDecodeError, image_path, resize_crop  # noqa: F401
from .tensors import ArrayImages, Normalize, PILImages, image_split, reference_augmentation  # noqa: F401
