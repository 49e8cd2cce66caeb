"""CLIP through open_clip: pretrained tags, local weight files, `local-dir:` folders, and the tiny
test configs shipped with the package (registered with `open_clip.add_model_config`, not a fork)."""
from __future__ import annotations

import difflib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from .weights import (WEIGHT_SUFFIXES, folder_problem, mismatch_error, names_a_file, save_weights, shape_differences,
                      shapes_of, weight_shapes)

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "data_files" / "model_configs"
TINY_MODELS = ("clipdg-tiny-vit", "clipdg-tiny-vit-64")
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


def register_tiny_configs() -> list[str]:
    """Make the shipped tiny test configs known to open_clip (idempotent); returns their names."""
    if not set(TINY_MODELS) <= set(open_clip.list_models()):  # add_model_config appends on every call
        open_clip.add_model_config(_CONFIG_DIR)
    return list(TINY_MODELS)


def config_image_size(model_name: str) -> int | None:
    """The image size of an open_clip model config (a name or 'local-dir:'), without building it."""
    register_tiny_configs()
    local = model_name.startswith(LOCAL_DIR)
    if local and not (Path(model_name[len(LOCAL_DIR):]) / "open_clip_config.json").is_file():
        return None
    cfg = open_clip.get_model_config(model_name if local else model_name.replace("/", "-")) or {}
    size = cfg.get("vision_cfg", {}).get("image_size")
    return None if size is None else int(size if isinstance(size, int) else size[0])


@dataclass
class ClipBundle:
    """A loaded CLIP model with what is needed to feed it."""
    model: nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple
    std: tuple
    model_name: str
    pretrained: str | None
    quick_gelu: bool = False


def _check_model_name(name: str) -> str:
    """open_clip's spelling of a built-in name ('ViT-B/32' -> 'ViT-B-32'); ValueError if unknown."""
    cleaned = name.replace("/", "-")
    known = open_clip.list_models()
    if cleaned not in known:
        close = difflib.get_close_matches(cleaned, known, n=5, cutoff=0.5)
        raise ValueError(f"model_name={name!r} is not an open_clip model config. Close matches: {close}. "
                         "See open_clip.list_models(); the tiny test models are " + ", ".join(TINY_MODELS))
    return cleaned


def _fetch_tag_weights(name: str, tag: str, tag_cfg: dict, cache_dir) -> None:
    """Fetch (or find cached) weights first, so a missing download gets a message that says what to do."""
    try:
        open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # hf_hub / urllib raise many types offline; all mean "not available"
        from huggingface_hub import constants
        where = cache_dir or (f"{constants.HF_HUB_CACHE} (huggingface_hub default cache)" if tag_cfg.get("hf_hub")
                              else os.path.expanduser("~/.cache/clip"))  # where open_clip looks for it
        raise RuntimeError(
            f"No weights for model_name={name!r}, pretrained={tag!r}: not in the cache ({where}) and the "
            f"download failed ({type(e).__name__}: {e}). "
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


def _resolve_source(model_name: str, pretrained, weights_arg: str = "pretrained") -> tuple[str, str, dict]:
    """(open_clip model name, kind of weights: none|tag|file|local-dir|hf-hub, the tag's config)."""
    if model_name.startswith((HF_HUB, LOCAL_DIR)):
        if pretrained is not None:
            raise ValueError(f"pretrained must be None with model_name={model_name!r} (it holds the weights)")
        folder = Path(model_name[len(LOCAL_DIR):])
        if model_name.startswith(LOCAL_DIR) and not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"model_name={model_name!r} needs {folder / 'open_clip_config.json'}; "
                                    "create the folder with save_local_dir(bundle, path)")
        if model_name.startswith(LOCAL_DIR) and not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise FileNotFoundError(f"model_name={model_name!r} has no weights file ({', '.join(WEIGHT_SUFFIXES)})")
        return model_name, model_name.split(":")[0], {}
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
    tags = open_clip.list_pretrained_tags_by_model(name)
    if names_a_file(pretrained) or os.path.isdir(pretrained):
        raise FileNotFoundError(folder_problem(pretrained, weights_arg) or f"{weights_arg}={str(pretrained)!r}: no "
                                f"such file (resolved from {Path.cwd()}); nor is it a known tag for {name!r} ({tags})")
    raise ValueError(f"{weights_arg}={str(pretrained)!r} is neither a known tag for {name!r} "
                     f"({tags}) nor an existing weights file")


# Tensors open_clip reshapes or fills in itself when it loads a file (factory.load_checkpoint).
_OPEN_CLIP_ADJUSTS = ("logit_scale", "logit_bias", "text.transformer.embeddings.position_ids")


def clip_weights_mismatch(model_name: str, path: str, weights_arg: str, found: dict,
                          loaded: bool | None = None) -> Exception | None:
    """The error for a weights file of these tensor shapes (`weight_shapes`) that does not fit
    `model_name` (built on the meta device), or None. Once open_clip has loaded the file (`loaded`;
    None: judged from whether it holds most of the model's tensors) only the shapes of the tensors
    both have can differ: open_clip silently interpolates position embeddings to another image size
    or context length, which would run weights at a size they were never trained for."""
    register_tiny_configs()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "No pretrained weights loaded ..." would only confuse here
    try:  # QuickGELU changes no shape
        expected = shapes_of(open_clip.create_model(model_name, pretrained=None, device="meta"))
    finally:
        logging.disable(previous)
    common = found.keys() & expected.keys()
    loaded = len(common) * 2 >= len(expected) if loaded is None else loaded
    keep = common if loaded else found.keys() | expected.keys()
    differences = shape_differences({k: v for k, v in found.items() if k in keep},
                                    {k: v for k, v in expected.items() if k in keep}, ignore=_OPEN_CLIP_ADJUSTS)
    if not differences:
        return None
    return mismatch_error(path, weights_arg, f"model_name={model_name!r}", found, expected,
                          f"Pass the model_name the weights were made for (open_clip.list_models() lists the "
                          f"configs), or a weights file made for {model_name!r}.", differences)


def load_clip(model_name: str, pretrained: str | os.PathLike | None = None, *, cache_dir: str | None = None,
              device: str | torch.device = "cpu", quick_gelu: bool | None = None,
              weights_arg: str = "pretrained") -> ClipBundle:
    """Build an open_clip model + tokenizer + eval transform, in eval mode (call .train() to fine-tune).

    `pretrained`: None (random init; warns for real models), an open_clip tag ("openai",
    "laion2b_s34b_b79k"; downloaded into / read from `cache_dir`), or a local weights file
    (.safetensors/.bin/.pt, loaded with weights_only=True). `model_name="local-dir:/path"` loads
    config and weights from a folder; "hf-hub:org/repo" is passed through to open_clip.
    QuickGELU is forced for tags trained with it (incl. "openai") and when `quick_gelu=True`.
    A weights file that is unreadable or of another architecture raises `WeightsFileError` /
    `WeightsMismatchError`, naming it as `weights_arg` (e.g. 'vision_weights')."""
    register_tiny_configs()
    name, kind, tag_cfg = _resolve_source(model_name, pretrained, weights_arg)
    pretrained = None if pretrained is None else str(pretrained)
    force_qg = _quick_gelu_flag(name, kind, pretrained, tag_cfg, quick_gelu)
    if kind == "tag":
        _fetch_tag_weights(name, pretrained, tag_cfg, cache_dir)
    # Readable, and what it holds: from the file's header, before anything is built
    found = weight_shapes(pretrained, weights_arg) if kind == "file" and pretrained.endswith(WEIGHT_SUFFIXES) else None
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device, force_quick_gelu=force_qg,
                                       cache_dir=cache_dir, weights_only=True)
    except Exception as e:  # open_clip asserts, load_state_dict raises RuntimeError: say it once, plainly
        if found is not None and (error := clip_weights_mismatch(name, pretrained, weights_arg, found, loaded=False)):
            raise error from e
        if kind != "hf-hub" or not isinstance(e, RuntimeError):
            raise
        raise RuntimeError(f"model_name={name!r}: config/weights not in the cache ({cache_dir or 'HF default'}) "
                           "and not downloadable. Run it once online, or use a local file / 'local-dir:'. "
                           f"Cause: {e}") from e
    if found is not None and (error := clip_weights_mismatch(name, pretrained, weights_arg, found, loaded=True)):
        raise error
    model.eval()
    pp = PreprocessCfg(**model.visual.preprocess_cfg)
    return ClipBundle(model=model, tokenizer=open_clip.get_tokenizer(name, cache_dir=cache_dir),
                      image_size=int(pp.input_size[1]), mean=tuple(pp.mean), std=tuple(pp.std),
                      model_name=name, pretrained=pretrained, quick_gelu=force_qg)


def save_local_dir(bundle: ClipBundle, path: str | os.PathLike) -> str:
    """Write `open_clip_config.json` + `open_clip_model.safetensors`; returns 'local-dir:<path>'."""
    model_cfg = open_clip.get_model_config(bundle.model_name)  # a name's or a local-dir: folder's
    if bundle.quick_gelu:
        model_cfg["quick_gelu"] = True  # the folder must rebuild the same activation
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": dict(bundle.model.visual.preprocess_cfg)}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_weights(bundle.model, folder / "open_clip_model.safetensors")
    return LOCAL_DIR + str(folder)
