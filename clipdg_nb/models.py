"""Models: open_clip CLIP (pretrained tag, local file, local-dir, tiny test configs), the zero-shot
head, cached image features, the vision-only baseline and safetensors checkpoints.

Heads and the linear probe live in `heads.py` and are re-exported here.
"""
from __future__ import annotations

import difflib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from .heads import (DEFAULT_CS, TEXT_MODES, ClipClassifier, LinearProbe, VisionClassifier,  # noqa: F401
                    class_text_embeddings, classifier_state, fit_linear_probe, load_classifier_state,
                    _unpack_model, render_prompt, tokenize_prompts)

TINY_MODELS = ("clipdg-tiny-vit", "clipdg-tiny-vit-64")
_CONFIG_DIR = Path(__file__).parent / "data_files" / "model_configs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def register_tiny_configs() -> list[str]:
    """Make the shipped tiny test configs known to open_clip (idempotent); returns their names."""
    from open_clip.factory import _MODEL_CONFIG_PATHS  # add_model_config appends on every call
    if _CONFIG_DIR not in _MODEL_CONFIG_PATHS or not set(TINY_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(_CONFIG_DIR)
    return list(TINY_MODELS)


@dataclass
class ClipBundle:
    """A loaded CLIP model with what is needed to feed it."""
    model: nn.Module
    tokenizer: Any
    preprocess_eval: Any  # open_clip's validation transform (resize, centre crop, normalise)
    image_size: int | tuple
    mean: tuple
    std: tuple
    model_name: str
    pretrained: str | None
    quick_gelu: bool = False

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)


def _check_model_name(name: str) -> str:
    """open_clip's spelling of a built-in name ('ViT-B/32' -> 'ViT-B-32'); ValueError if unknown."""
    cleaned = name.replace("/", "-")
    known = open_clip.list_models()
    if cleaned not in known:
        close = difflib.get_close_matches(cleaned, known, n=5, cutoff=0.5)
        raise ValueError(f"model_name={name!r} is not an open_clip model config. Close matches: {close}. "
                         "See open_clip.list_models(); the tiny test models are " + ", ".join(TINY_MODELS))
    return cleaned


def _weights_cache_hint(tag_cfg: dict, cache_dir) -> str:
    """Where open_clip looks for a tag's weights (HF hub cache, or ~/.cache/clip for URLs)."""
    if cache_dir:
        return str(cache_dir)
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import constants
        return f"{constants.HF_HUB_CACHE} (huggingface_hub default cache)"
    return os.path.expanduser("~/.cache/clip")


def _fetch_tag_weights(name: str, tag: str, tag_cfg: dict, cache_dir) -> None:
    """Fetch (or find cached) weights first, so a missing download gets a message that says what to do."""
    try:
        open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # hf_hub / urllib raise many types offline; all mean "not available"
        raise RuntimeError(
            f"No weights for model_name={name!r}, pretrained={tag!r}: not in the cache "
            f"({_weights_cache_hint(tag_cfg, cache_dir)}) and the download failed ({type(e).__name__}: {e}). "
            f"To get them: run load_clip({name!r}, {tag!r}, cache_dir=...) once on a machine with internet "
            "access and reuse that cache_dir; or pass pretrained='/path/to/weights.safetensors' "
            "(quick_gelu=True for OpenAI weights); or model_name='local-dir:/path' to a folder holding "
            "open_clip_config.json and the weights (see save_local_dir)."
        ) from e


def _quick_gelu_flag(name: str, kind: str, tag: str | None, tag_cfg: dict, quick_gelu: bool | None) -> bool:
    """Whether to force QuickGELU. OpenAI weights need it and a plain name silently uses GELU (#771)."""
    if quick_gelu is not None:
        return bool(quick_gelu)
    if kind == "tag":
        return bool(tag_cfg.get("quick_gelu", False)) or tag.lower() == "openai"
    # Our tiny configs are only ever trained here, with GELU: no OpenAI weights to get wrong.
    if kind == "file" and name not in TINY_MODELS and not (open_clip.get_model_config(name) or {}).get("quick_gelu", False):
        warnings.warn(f"Loading a weights file into {name!r} with nn.GELU. If these are OpenAI (or other "
                      "QuickGELU-trained) weights, pass quick_gelu=True or the outputs will be silently "
                      "wrong; pass quick_gelu=False to silence this warning.", UserWarning, stacklevel=3)
    return False


def _check_local_dir(path: str) -> None:
    folder = Path(path)
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"model_name='local-dir:{path}' needs {folder / 'open_clip_config.json'}; "
                                "create the folder with save_local_dir(bundle, path)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
        raise FileNotFoundError(f"model_name='local-dir:{path}' has no weights file ({', '.join(WEIGHT_SUFFIXES)})")


def _resolve_source(model_name: str, pretrained) -> tuple[str, str, dict]:
    """(open_clip model name, kind of weights: none|tag|file|local-dir|hf-hub, the tag's config)."""
    for prefix, kind in ((HF_HUB, "hf-hub"), (LOCAL_DIR, "local-dir")):
        if model_name.startswith(prefix):
            if pretrained is not None:
                raise ValueError(f"pretrained must be None with model_name='{prefix}...' (it holds the weights)")
            if kind == "local-dir":
                _check_local_dir(model_name[len(prefix):])
            return model_name, kind, {}
    name = _check_model_name(model_name)
    if pretrained is None:
        if name not in TINY_MODELS:
            warnings.warn(f"load_clip({name!r}) with pretrained=None: random weights. Pass a tag such as "
                          f"{open_clip.list_pretrained_tags_by_model(name)[:3]} or a weights file.",
                          UserWarning, stacklevel=3)
        return name, "none", {}
    if open_clip.pretrained.is_pretrained_cfg(name, str(pretrained)):
        return name, "tag", open_clip.pretrained.get_pretrained_cfg(name, str(pretrained))
    if os.path.isfile(pretrained):
        return name, "file", {}
    raise ValueError(f"pretrained={str(pretrained)!r} is neither a known tag for {name!r} "
                     f"({open_clip.list_pretrained_tags_by_model(name)}) nor an existing weights file")


def load_clip(model_name: str, pretrained: str | os.PathLike | None = None, *, cache_dir: str | None = None,
              device: str | torch.device = "cpu", quick_gelu: bool | None = None) -> ClipBundle:
    """Build an open_clip model + tokenizer + eval transform, in eval mode (call .train() to fine-tune).

    `pretrained`: None (random init; warns for real models), an open_clip tag ("openai",
    "laion2b_s34b_b79k"; downloaded into / read from `cache_dir`), or a local weights file
    (.safetensors/.bin/.pt, loaded with weights_only=True). `model_name="local-dir:/path"` loads
    config and weights from a folder; "hf-hub:org/repo" is passed through to open_clip.
    QuickGELU is forced for tags trained with it (incl. "openai") and when `quick_gelu=True`.
    """
    register_tiny_configs()
    name, kind, tag_cfg = _resolve_source(model_name, pretrained)
    pretrained = None if pretrained is None else str(pretrained)
    force_qg = _quick_gelu_flag(name, kind, pretrained, tag_cfg, quick_gelu)
    if kind == "tag":
        _fetch_tag_weights(name, pretrained, tag_cfg, cache_dir)
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device, force_quick_gelu=force_qg,
                                       cache_dir=cache_dir, weights_only=True)
    except RuntimeError as e:
        if kind != "hf-hub":
            raise
        raise RuntimeError(f"model_name={name!r}: config/weights not in the cache ({cache_dir or 'HF default'}) "
                           "and not downloadable. Run it once online, or use a local file / 'local-dir:'. "
                           f"Cause: {e}") from e
    model.eval()
    pp = PreprocessCfg(**model.visual.preprocess_cfg)
    size = tuple(model.visual.image_size) if isinstance(model.visual.image_size, (tuple, list)) \
        else (model.visual.image_size,) * 2
    return ClipBundle(model=model, tokenizer=open_clip.get_tokenizer(name, cache_dir=cache_dir),
                      preprocess_eval=image_transform_v2(pp, is_train=False),
                      image_size=size[0] if size[0] == size[1] else size, mean=tuple(pp.mean), std=tuple(pp.std),
                      model_name=name, pretrained=pretrained, quick_gelu=force_qg)


def save_local_dir(bundle: ClipBundle, path: str | os.PathLike) -> str:
    """Write `open_clip_config.json` + `open_clip_model.safetensors`; returns 'local-dir:<path>'."""
    if bundle.model_name.startswith(LOCAL_DIR):
        src = Path(bundle.model_name[len(LOCAL_DIR):]) / "open_clip_config.json"
        model_cfg = json.loads(src.read_text())["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(bundle.model_name)
    if bundle.quick_gelu:
        model_cfg["quick_gelu"] = True  # the folder must rebuild the same activation
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": dict(bundle.model.visual.preprocess_cfg)}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_weights(bundle.model, folder / "open_clip_model.safetensors")
    return LOCAL_DIR + str(folder)


def zeroshot_weights(model, tokenizer, classnames: Sequence[str], templates: Sequence, device="cpu",
                     batch_size: int = 32) -> torch.Tensor:
    """Zero-shot classifier [D, C], equal to open_clip.build_zero_shot_classifier.

    Each prompt embedding is L2-normalised, averaged over templates, renormalised; `batch_size`
    classes per text forward. `model` (or a ClipBundle, then tokenizer may be None) must already
    be on `device`.
    """
    model, tokenizer = _unpack_model(model, tokenizer)
    cols = []
    with torch.no_grad():
        for i in range(0, len(classnames), batch_size):
            names = list(classnames[i:i + batch_size])
            tokens = tokenize_prompts(tokenizer, names, templates).to(device)
            cols.append(class_text_embeddings(model, tokens, len(names)).T)
    return torch.cat(cols, dim=1)


def _image_encoder(model):
    """The callable giving image features: .features (our classifiers), .encode_image (CLIP), or the module."""
    for attr in ("features", "encode_image"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


def _batches(images, batch_size: int) -> Iterable[tuple[torch.Tensor, Any]]:
    """Yield (images, labels-or-None) from a tensor or from a loader of tensors / (x, y, ...) tuples."""
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size], None
        return
    for batch in images:
        if isinstance(batch, (tuple, list)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


def encode_images(model_or_visual, images, batch_size: int = 256, device="cpu", normalize: bool = True,
                  amp: bool = False, with_labels: bool = False):
    """Image features [N, D] (float32, on CPU) for caching: batched, inference mode, eval mode.

    `images` is a tensor [N, 3, H, W] or a loader yielding tensors or (x, y, ...) tuples; with
    `with_labels=True` returns (features, labels). Moves the model to `device`; restores train mode.
    """
    if hasattr(model_or_visual, "model") and hasattr(model_or_visual, "tokenizer"):
        model_or_visual = model_or_visual.model  # a ClipBundle
    model = model_or_visual.to(device)
    was_training = model.training
    model.eval()
    encode = _image_encoder(model)
    feats, labels = [], []
    dev_type = torch.device(device).type
    try:
        with torch.inference_mode(), torch.autocast(dev_type, dtype=torch.bfloat16 if dev_type == "cpu"
                                                     else torch.float16, enabled=amp):
            for x, y in _batches(images, batch_size):
                f = encode(x.to(device, non_blocking=True)).float()
                feats.append((F.normalize(f, dim=-1) if normalize else f).cpu())
                if y is not None:
                    labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was_training)
    # Cloned outside inference mode so the features can enter autograd (e.g. a torch linear probe).
    out = torch.cat(feats).clone()
    if with_labels:
        return out, (torch.cat(labels).clone() if labels else None)
    return out


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file with weights_only=True (never pickles)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def _torchvision_imagenet_vit_b_32() -> dict[str, torch.Tensor]:
    """ImageNet vit_b_32 weights from torchvision's cache (downloading if online), weights_only."""
    from torchvision.models import ViT_B_32_Weights
    url = ViT_B_32_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return ViT_B_32_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"No ImageNet weights for vit_b_32: {cached} does not exist and the download failed "
            f"({type(e).__name__}: {e}). To get them: run vision_only(..., weights='imagenet') once online "
            "(or set TORCH_HOME to a folder that holds hub/checkpoints/" + os.path.basename(url) +
            "), or pass weights='/path/to/state_dict.pth|.safetensors'.") from e


def _load_backbone_weights(backbone: nn.Module, sd: dict[str, torch.Tensor], image_size: int) -> None:
    """Load a torchvision ViT state dict into a head-less backbone (ImageNet head dropped)."""
    from torchvision.models.vision_transformer import interpolate_embeddings
    sd = {k: v for k, v in sd.items() if not k.startswith("heads.")}
    if sd.get("encoder.pos_embedding") is not None and \
            sd["encoder.pos_embedding"].shape != backbone.encoder.pos_embedding.shape:
        sd = interpolate_embeddings(image_size, backbone.patch_size, sd)  # new resolution
    backbone.load_state_dict(sd, strict=True)


def _fresh_head(dim: int, num_classes: int) -> nn.Linear:
    """A zero-initialised linear head, as torchvision initialises its ViT head."""
    head = nn.Linear(dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def vision_only(num_classes: int, arch: str = "vit_b_32", weights: str | os.PathLike | None = None,
                image_size: int = 224, *, clip: ClipBundle | None = None) -> VisionClassifier:
    """The vision-only baseline: a backbone with a fresh linear head (zeros for torchvision, like its init).

    arch: "vit_b_32" (torchvision; weights None | "imagenet" | a state-dict file), "tiny" (a 2-layer
    ViT for tests, image_size 32 or 64) or "clip-visual" (the image tower of `clip`).
    A state-dict file may be a torchvision ViT (head ignored) or a saved VisionClassifier.
    """
    from torchvision.models import VisionTransformer, vit_b_32
    if arch == "clip-visual":
        if clip is None or weights is not None:
            raise ValueError("arch='clip-visual' needs clip=<ClipBundle> (weights come from the bundle; "
                             "leave weights=None)")
        head = _fresh_head(clip.model.visual.output_dim, num_classes)
        return VisionClassifier(clip.model.visual, head, mean=clip.mean, std=clip.std, image_size=clip.image_size)
    if arch not in ("vit_b_32", "tiny"):
        raise ValueError(f"arch={arch!r} is unknown; choose 'vit_b_32', 'tiny' or 'clip-visual'")
    if weights == "imagenet" and arch != "vit_b_32":
        raise ValueError("weights='imagenet' exists only for arch='vit_b_32'")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights={str(weights)!r}: no such file; pass None, 'imagenet' or a file path")
    # Read the weights before building: an offline failure should come fast, not after the init.
    sd = None if weights is None else \
        _torchvision_imagenet_vit_b_32() if weights == "imagenet" else _read_state_dict(weights)
    if arch == "tiny":
        backbone = VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                     hidden_dim=64, mlp_dim=128)
    else:
        backbone = vit_b_32(image_size=image_size)
    dim = backbone.hidden_dim
    backbone.heads = nn.Identity()  # features() = class token; the head is ours
    head = _fresh_head(dim, num_classes)
    model = VisionClassifier(backbone, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size)
    if sd is not None and any(k.startswith("backbone.") for k in sd):
        model.load_state_dict(sd, strict=True)  # a saved VisionClassifier
    elif sd is not None:
        _load_backbone_weights(backbone, sd, image_size)
    return model


def save_weights(module_or_state_dict: nn.Module | dict, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors. Tensors are cloned contiguous, so tied / shared storages
    (which safetensors refuses) are written as separate copies; `load_weights` restores them."""
    from safetensors.torch import save_file
    sd = module_or_state_dict.state_dict() if isinstance(module_or_state_dict, nn.Module) else module_or_state_dict
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True):
    """Load a safetensors (or weights_only torch) state dict into `module`; returns the key report."""
    return module.load_state_dict(_read_state_dict(path), strict=strict)
