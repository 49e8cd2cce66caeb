"""Models: CLIP through open_clip, the classifier heads, the vision-only baseline, the linear probe,
frozen-feature caching and weight files. One concept per module; the names below are the API."""
from .clip import TINY_MODELS, ClipBundle, load_clip, register_tiny_configs, save_local_dir  # noqa: F401
from .features import encode_images  # noqa: F401
from .heads import ClipClassifier, class_text_embeddings, identical_prompt_classes, tokenize_prompts  # noqa: F401
from .probe import DEFAULT_CS, LinearProbe, fit_linear_probe  # noqa: F401
from .vision import IMAGENET_MEAN, IMAGENET_STD, VisionClassifier, vision_only  # noqa: F401
from .weights import WeightsFileError, WeightsMismatchError, read_state_dict, save_weights, weight_shapes  # noqa: F401
