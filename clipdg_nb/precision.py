"""Device and precision: the one place that turns config names into torch objects (as open_clip's
`precision.py`). Plain functions, no global state."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device='cpu' or 'auto'")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 on CUDA where supported, fp32 elsewhere (CPU bf16 is slower on most CPUs)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast context for a precision name; fp32 (and fp16 on CPU) run without autocast."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()
