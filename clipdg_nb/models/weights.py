"""Model weights on disk: safetensors for what we write, `weights_only=True` for torch files we read.
Never a pickled module."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
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


def save_weights(module_or_state_dict: nn.Module | dict, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically. Tensors are cloned contiguous, so tied or shared
    storages (which safetensors refuses) are written as separate copies."""
    from safetensors.torch import save_file

    from ..runs import atomic_path

    sd = module_or_state_dict.state_dict() if isinstance(module_or_state_dict, nn.Module) else module_or_state_dict
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True):
    """Load a safetensors (or weights_only torch) state dict into `module`; returns the key report."""
    return module.load_state_dict(read_state_dict(path), strict=strict)
