"""Where tensors compute: the device and precision a config names (as open_clip's `precision.py`),
and the torchrun primitives (the process group, per-rank shards of one global batch, collectives).
Imports nothing from the package (open_clip's `distributed.py` style): `methods.run` and
`train.fit` use these, never the other way round. Plain functions, no global state.

    torchrun --nproc-per-node 8 -m clipdg_nb.cli train --config params.yaml
"""
from __future__ import annotations

import contextlib
from contextlib import nullcontext
import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's value of a picklable object, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a (detached) tensor."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (downloads, decodes, caches); the others then find it done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def info() -> DistInfo:
    """Rank, world size and local rank of this process's group (or 0, 1, 0 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): nccl on
    CUDA (each rank on GPU LOCAL_RANK, made current), gloo on CPU. A world of one starts no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo(local_rank=local)
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        # Generous timeout: ranks > 0 wait in one barrier while rank 0 decodes a whole split.
        minutes = float(os.environ.get("CLIPDG_DIST_TIMEOUT_MIN", "180"))
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), init_method="env://",
                                rank=int(os.environ["RANK"]), world_size=world,
                                timeout=datetime.timedelta(minutes=minutes))
    return info()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler:
    """Per-rank shards of the global batches of one per-epoch-seeded draw.

    Every rank draws the same order from `sampler` (it depends only on seed and epoch), cuts it
    into global batches of `batch_size` exactly as one process would, and keeps its contiguous
    slice of each. A rank left with nothing in a short last batch gets one stand-in item of weight
    0, so all ranks run the same number of steps (DDP needs that). `weight(k)`, the factor for the
    rank's mean loss on batch k, makes DDP's gradient average the mean over the global batch.
    """

    def __init__(self, sampler, batch_size: int, rank: int, world_size: int):
        if batch_size < world_size:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of processes ({world_size}); "
                             "every rank needs at least one image of each global batch")
        self.sampler, self.batch_size, self.rank, self.world_size = sampler, int(batch_size), rank, world_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _bounds(self, k: int) -> tuple[int, int, int]:
        size = min(self.batch_size, len(self.sampler) - k * self.batch_size)
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra), size

    def weight(self, k: int) -> float:
        start, stop, size = self._bounds(k)
        return self.world_size * (stop - start) / size

    def __iter__(self):
        order = list(iter(self.sampler))
        for k in range(len(self)):
            batch = order[k * self.batch_size:(k + 1) * self.batch_size]
            start, stop, _ = self._bounds(k)
            yield batch[start:stop] or batch[:1]  # the stand-in carries weight 0


# ---------------------------------------------------------------------------------------------
# Device and precision: the one place that turns config names into torch objects
# ---------------------------------------------------------------------------------------------


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
