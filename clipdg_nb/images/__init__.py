"""Images to tensors: each image decoded once into a per-split uint8 cache (`cache.py`, exact
open_clip eval geometry from `decode.py`), served as views and normalised on the device (`views.py`),
augmented in batches (`augment.py`)."""
from .cache import SplitCache  # noqa: F401
from .decode import DEFAULT_CACHE, DEFAULT_DRAFT, ImageDecodeError, image_path, resize_crop  # noqa: F401
from .views import ArrayImages, CachedImages, Normalize, PILImages, decode_split, image_split, prepare_splits  # noqa: F401
