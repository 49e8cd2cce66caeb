"""The vision-only baseline: torchvision's ViT-B/32 (ImageNet weights), a tiny ViT for tests, or
CLIP's own image tower, each with a fresh linear head."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .weights import describe_clip, mismatch_error, read_state_dict, shape_differences, shapes_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionClassifier(nn.Module):
    """Backbone + linear head, with the same `features` / `forward` as `ClipClassifier`.
    `mean`, `std` and `image_size` describe the input the backbone expects."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, mean, std, image_size: int):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.mean, self.std, self.image_size = tuple(mean), tuple(std), int(image_size)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _imagenet_vit_b_32() -> dict[str, torch.Tensor]:
    """ImageNet vit_b_32 weights from torchvision's hub cache (downloaded there if online), weights_only."""
    from torchvision.models import ViT_B_32_Weights
    try:
        return ViT_B_32_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as e:
        url = ViT_B_32_Weights.IMAGENET1K_V1.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        raise RuntimeError(
            f"No ImageNet weights for vit_b_32: {cached} does not exist and the download failed "
            f"({type(e).__name__}: {e}). Run once online (or set TORCH_HOME to a folder that holds "
            f"hub/checkpoints/{os.path.basename(url)}), or pass vision_weights='/path/to/state_dict'.") from e


def _fresh_head(dim: int, num_classes: int) -> nn.Linear:
    """A zero-initialised linear head, as torchvision initialises its ViT head."""
    head = nn.Linear(dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def vision_only(num_classes: int, arch: str = "vit_b_32", weights: str | os.PathLike | None = None,
                image_size: int = 224, *, clip=None) -> VisionClassifier:
    """A backbone with a fresh linear head. arch: "vit_b_32" (torchvision; weights None | "imagenet" |
    a state-dict file: a torchvision ViT's, its head ignored, or a saved VisionClassifier's), "tiny"
    (a 2-layer ViT for tests) or "clip-visual" (the image tower of the ClipBundle `clip`)."""
    from torchvision.models import VisionTransformer, vit_b_32
    from torchvision.models.vision_transformer import interpolate_embeddings

    if arch == "clip-visual":
        head = _fresh_head(clip.model.visual.output_dim, num_classes)
        return VisionClassifier(clip.model.visual, head, mean=clip.mean, std=clip.std, image_size=clip.image_size)
    # Read the weights before building: an offline failure should come fast, not after the init.
    sd = None if weights is None else _imagenet_vit_b_32() if weights == "imagenet" else \
        read_state_dict(weights, what="vision_weights")
    if arch == "tiny":
        backbone = VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                     hidden_dim=64, mlp_dim=128)
    else:
        backbone = vit_b_32(image_size=image_size)
    backbone.heads = nn.Identity()  # features() = the class token; the head is ours
    model = VisionClassifier(backbone, _fresh_head(backbone.hidden_dim, num_classes),
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size)
    if sd is not None and (error := vision_weights_mismatch(shapes_of(sd), weights, arch, num_classes, image_size)):
        raise error
    if sd is not None and any(k.startswith("backbone.") for k in sd):
        model.load_state_dict(sd, strict=True)  # a saved VisionClassifier
    elif sd is not None:
        sd = {k: v for k, v in sd.items() if not k.startswith("heads.")}
        if sd.get("encoder.pos_embedding") is not None and \
                sd["encoder.pos_embedding"].shape != backbone.encoder.pos_embedding.shape:
            sd = interpolate_embeddings(image_size, backbone.patch_size, sd)  # another resolution
        backbone.load_state_dict(sd, strict=True)
    return model


def vision_weights_mismatch(found: dict, weights, arch: str, num_classes: int, image_size: int) -> Exception | None:
    """The error `vision_only` raises for a weights file of these tensor shapes (`weight_shapes`), or None:
    judged on a model built on the meta device, for `arch` 'tiny' / 'vit_b_32' (a 'clip-visual' file is a
    CLIP's: `clip_weights_mismatch`). A saved VisionClassifier's must fit exactly; a torchvision ViT's
    head is ignored, and its position embeddings may be of another image size (torchvision resizes them)."""
    with torch.device("meta"):
        model = vision_only(num_classes, arch=arch, weights=None, image_size=image_size)
    saved_classifier = any(k.startswith("backbone.") for k in found)
    if not saved_classifier:
        found = {k: v for k, v in found.items() if not k.startswith("heads.")}
    expected = shapes_of(model if saved_classifier else model.backbone)
    differences = shape_differences(found, expected, ignore=() if saved_classifier else ("encoder.pos_embedding",))
    if not differences:
        return None
    hint = ("These are open_clip CLIP weights: use vision_arch='clip-visual' with the model_name they were "
            "made for." if describe_clip(found) else
            "Pass the vision_arch the weights were saved with (a saved VisionClassifier also fixes the "
            "number of classes, i.e. the dataset).")
    return mismatch_error(weights, "vision_weights", f"vision_arch={arch!r}", found, expected, hint, differences)
