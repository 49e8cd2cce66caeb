"""Which parameters train: `TRAINABLE`, read through `config.MethodSpec.trainable` (nothing else
freezes a parameter): the image tower's last k blocks (partial fine-tuning) or the biases and the
head (BitFit)."""
from __future__ import annotations

from torch import nn

# Parameters of an image tower after its blocks (names relative to the tower), per architecture.
AFTER_BLOCKS = ("ln_post", "proj", "attn_pool", "encoder.ln", "heads")


def image_tower(model: nn.Module) -> nn.Module:
    """The image tower of a ClipClassifier (any text mode) or a VisionClassifier."""
    if hasattr(model, "backbone"):
        return model.backbone
    return model.clip.visual if getattr(model, "text_mode", None) == "trainable" else model.visual


def tower_blocks(tower: nn.Module) -> nn.ModuleList:
    """The transformer blocks of an open_clip VisionTransformer or a torchvision VisionTransformer."""
    if hasattr(tower, "transformer") and hasattr(tower.transformer, "resblocks"):
        return tower.transformer.resblocks
    if hasattr(tower, "encoder") and hasattr(tower.encoder, "layers"):
        return tower.encoder.layers
    raise ValueError(f"train_blocks: the image tower {type(tower).__name__} has no transformer blocks "
                     "(transformer.resblocks or encoder.layers); use train_blocks=None")


def train_last_blocks(model: nn.Module, k: int | None) -> nn.Module:
    """Freeze the image tower of `model` but its last `k` blocks (None: nothing frozen), in place;
    the rest of the model keeps training. The layers after the blocks train with the last block (so
    k=0 freezes the whole tower) and the stem with the first (k = the number of blocks is all)."""
    if k is None:
        return model
    tower = image_tower(model)
    blocks = list(tower_blocks(tower))
    if k > len(blocks):
        raise ValueError(f"train_blocks={k} exceeds the {len(blocks)} transformer blocks of the image tower "
                         f"({type(tower).__name__}); use 0..{len(blocks)} or None (all)")
    if k == len(blocks):
        return model
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    trainable = {id(p) for block in blocks[len(blocks) - k:] for p in block.parameters()}
    for name, p in tower.named_parameters():
        after = any((name + ".").startswith(prefix + ".") for prefix in AFTER_BLOCKS)
        p.requires_grad_(id(p) in trainable or (k > 0 and id(p) not in in_blocks and after))
    return model


def biases_and_head(model: nn.Module) -> nn.Module:
    """BitFit (Ben Zaken et al. 2022): only the bias terms and the classification head (`head.*`)
    train; every weight matrix, norm scale and embedding is frozen. In place."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head.") or name.endswith("bias"))
    return model


# config.MethodSpec.trainable -> (model, cfg) -> the model with the rest frozen (in place).
TRAINABLE = {"last_blocks": lambda model, cfg: train_last_blocks(model, cfg.train_blocks),
             "biases_and_head": lambda model, cfg: biases_and_head(model)}
