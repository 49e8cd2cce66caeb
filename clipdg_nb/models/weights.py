"""Model weights on disk: safetensors for what we write, `weights_only=True` for torch files we read,
never a pickled module. Checked at the door: unreadable -> `WeightsFileError`, another architecture
than asked for -> `WeightsMismatchError` (what the file holds vs what was expected)."""
from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..paths import atomic_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # hf-hub:org/name, local-dir:/path: not a file


def names_a_file(value) -> bool:
    """The one rule for whether a `pretrained` / `vision_weights` value names a weights file (a path,
    or a name with a weights suffix), not a tag ('openai', 'imagenet') or a scheme ('local-dir:')."""
    text = str(value)
    return (isinstance(value, (str, Path)) and not _SCHEME.match(text)
            and ("/" in text or os.sep in text or text.lower().endswith(WEIGHT_SUFFIXES + (".npz",))))


class WeightsFileError(ValueError):
    """A weights file that cannot be read as a state dict (junk, truncated, a pickled module)."""


class WeightsMismatchError(ValueError):
    """A readable weights file that holds another architecture than the one asked for."""


def folder_problem(path: str | os.PathLike, what: str) -> str | None:
    """For a weights parameter naming a folder: that it is one and what to pass instead (the weights
    files in it, or `local-dir:` for an open_clip model folder); None for anything else."""
    folder, where = Path(path), f"{what}={str(path)!r}"
    if not folder.is_dir():
        return None
    if (folder / "open_clip_config.json").is_file():
        return (f"{where} is an open_clip model folder, not a weights file: pass "
                f"model='local-dir:{folder}' and pretrained=None (the folder holds its weights)")
    files = sorted(str(f) for f in folder.iterdir() if f.name.lower().endswith(WEIGHT_SUFFIXES))
    return (f"{where} is a folder, not a weights file: pass "
            + (f"one of the weights files in it, e.g. {files[0]!r}" if files else
               f"a weights file ({', '.join(WEIGHT_SUFFIXES)}); this folder holds none"))


def _unreadable(path, what: str, error: Exception) -> WeightsFileError:
    detail = str(error) if len(str(error)) <= 160 else str(error)[:160].rsplit(" ", 1)[0] + " ..."
    return WeightsFileError(
        f"{what}={str(path)!r} is not a readable weights file ({type(error).__name__}: {detail}). It may be "
        f"truncated (an interrupted download or copy?) or not weights at all: download or save it again. "
        f"Readable are .safetensors files and torch state dicts (.pt / .pth / .bin) that "
        f"torch.load(weights_only=True) accepts; pickled modules are refused.")


def _unwrap(sd, path, what: str) -> dict:
    """The state dict inside a checkpoint ({'state_dict': ...} or {'model': ...}), 'module.' stripped."""
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _unreadable(path, what, TypeError(f"it holds a {type(sd).__name__}, not a dict of tensors"))
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _read(path: str | os.PathLike, what: str, header_only: bool) -> dict:
    """The state dict of a weights file, or (`header_only`) as little of it as gives the shapes:
    a safetensors header, or a memory-mapped torch zip file."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(folder_problem(path, what) or f"{what}={path!r}: no such file (resolved from {Path.cwd()})")
    try:
        if path.endswith(".safetensors"):
            if not header_only:
                return load_file(path)
            with safe_open(path, "pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=header_only and zipfile.is_zipfile(path))
    except Exception as e:  # safetensors, pickle, zip and torch all raise their own types
        raise _unreadable(path, what, e) from e
    return _unwrap(sd, path, what)


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file with weights_only=True (never pickles).
    `what` names the file in errors as the caller knows it (e.g. 'vision_weights')."""
    return _read(path, what, header_only=False)


def weight_shapes(path: str | os.PathLike, what: str = "weights file") -> dict[str, tuple]:
    """Names and shapes of the tensors in a weights file, from its header: a cheap check that the
    file is readable and of what it holds."""
    return shapes_of(_read(path, what, header_only=True))


def shapes_of(weights: nn.Module | dict) -> dict[str, tuple]:
    """{name: shape} of a module's or a state dict's tensors (a table of shapes passes through)."""
    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    return {k: tuple(getattr(v, "shape", v)) for k, v in sd.items() if isinstance(v, (torch.Tensor, tuple))}


def _layers(shapes: dict, pattern: str) -> int:
    return len({m.group(1) for k in shapes if (m := re.match(pattern, k))})


_VISION_BLOCK, _TEXT_BLOCK = r"visual\.transformer\.resblocks\.(\d+)\.", r"transformer\.resblocks\.(\d+)\."


def describe_clip(shapes: dict) -> str | None:
    """'an open_clip CLIP with image size 224 (patch 32), vision width 768 / 12 layers, ...' or None."""
    conv, vpos = shapes.get("visual.conv1.weight"), shapes.get("visual.positional_embedding")
    tpos, proj = shapes.get("positional_embedding"), shapes.get("text_projection")
    if conv is None and tpos is None:
        return None
    parts = []
    if conv is not None and vpos is not None and len(vpos) == 2:
        parts.append(f"image size {round(math.sqrt(max(vpos[0] - 1, 0))) * conv[-1]} (patch {conv[-1]})")
    if conv is not None:
        parts.append(f"vision width {conv[0]} / {_layers(shapes, _VISION_BLOCK)} layers")
    if tpos is not None and len(tpos) == 2:
        parts.append(f"text width {tpos[1]} / {_layers(shapes, _TEXT_BLOCK)} layers / context {tpos[0]}")
    if proj is not None and len(proj) == 2:
        parts.append(f"embed dim {proj[1]}")
    return "an open_clip CLIP with " + ", ".join(parts)


def describe_vit(shapes: dict) -> str | None:
    """'a torchvision ViT with image size 224 (patch 32), width 768 / 12 layers' (+ its head) or None."""
    prefix = "backbone." if "backbone.conv_proj.weight" in shapes else ""
    conv, pos = shapes.get(prefix + "conv_proj.weight"), shapes.get(prefix + "encoder.pos_embedding")
    if conv is None:
        return None
    size = f"image size {round(math.sqrt(max(pos[1] - 1, 0))) * conv[-1]} (patch {conv[-1]}), " if pos else ""
    layers = _layers(shapes, re.escape(prefix) + r"encoder\.layers\.encoder_layer_(\d+)\.")
    text = f"a torchvision ViT with {size}width {conv[0]} / {layers} layers"
    head = shapes.get("head.weight") if prefix else None
    return text + (f", a head for {head[0]} classes (a saved VisionClassifier)" if head else "")


def describe(shapes: dict) -> str:
    """What a state dict holds, in words."""
    known = describe_clip(shapes) or describe_vit(shapes)
    return known or (f"a state dict of {len(shapes)} tensors that is neither an open_clip CLIP nor a torchvision "
                     f"ViT (keys {', '.join(list(shapes)[:4])}, ...)")


def _listing(items: list, n: int = 3) -> str:
    return "; ".join(items[:n]) + (f"; ... ({len(items)} in all)" if len(items) > n else "")


def shape_differences(found: dict, expected: dict, ignore=()) -> list[str]:
    """How two {name: shape} tables differ, in words (empty when they fit)."""
    differ = [f"{k} {list(found[k])} in the file vs {list(expected[k])} expected"
              for k in expected if k in found and k not in ignore and tuple(found[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in found and k not in ignore]
    extra = [k for k in found if k not in expected and k not in ignore]
    return [f"{len(keys)} tensor(s) {what}: {_listing(keys)}" for keys, what in
            ((differ, "of another shape"), (missing, "missing"), (extra, "the model does not have")) if keys]


def mismatch_error(path, what: str, asked: str, found: dict, expected: dict, remedy: str,
                   differences: list[str]) -> WeightsMismatchError:
    """One message: the file, what it holds, what `asked` expects, how they differ, what to do."""
    return WeightsMismatchError(
        f"{what}={str(path)!r} does not fit {asked}: the file holds {describe(found)}, but {asked} expects "
        f"{describe(expected)} ({'; '.join(differences) or 'the tensors differ'}). {remedy}")


def save_weights(module_or_state_dict: nn.Module | dict, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically. Tensors are cloned contiguous, so tied or shared
    storages (which safetensors refuses) are written as separate copies."""
    sd = module_or_state_dict.state_dict() if isinstance(module_or_state_dict, nn.Module) else module_or_state_dict
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
