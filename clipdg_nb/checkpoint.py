"""The resumable training checkpoint: one safetensors file per run holding the weights, the
optimizer state, the SWA / EMA averages, the best weights so far and the RNG state, with the
JSON-able rest (epoch, history, parameters) in its header. Written to a unique temporary name and
renamed into place, so a reader never sees half a checkpoint and two writers never collide."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .paths import atomic_path

META_KEY = "clipdg_nb.train"


def save(path: Path, model, optimizer, averages: dict, best_state: dict | None, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu()
    meta = dict(meta, optim_groups=opt_state["param_groups"])
    for prefix, acc in averages.items():
        if acc is not None and acc.n_averaged > 0:
            acc_tensors, meta[f"{prefix}_meta"] = acc.state()
            tensors.update({f"{prefix}.{k}": v for k, v in acc_tensors.items()})
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    # Contiguous clones: tensors sharing storage (tied weights) must serialise independently.
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})


def load(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()[META_KEY])
    return load_file(str(path)), meta


def take(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def restore_optimizer(optimizer, tensors: dict, groups: list) -> None:
    state: dict = {}
    for key, value in take(tensors, "optim").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for group in groups:  # JSON turned tuples into lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_rng(tensors: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
