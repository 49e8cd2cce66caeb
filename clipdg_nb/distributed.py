"""One run across processes with PyTorch's DistributedDataParallel, launched by `torchrun`.

    torchrun --nproc-per-node 8 -m clipdg_nb.distributed --config params.yaml

`params.yaml` holds the same flat parameters a notebook run takes (a `FinetuneConfig`; the
`parameters` cell's names). The run is the one a single process would do: one seeded sampler draw
per epoch is cut into per-rank shards (`ShardedBatchSampler`), so the global batch is
`batch_size` images whatever the number of processes, and each rank's loss is weighted so DDP's
gradient average equals the one-process mean over the global batch. Every rank evaluates the
selection split on its own (no collective; the weights are identical on all ranks, so they all
choose the same epoch); rank 0 alone writes checkpoints, the run record and predictions.

`train.fit` is the only training loop: it asks `info()` whether a process group is up and wraps
the model in DDP when the world is larger than one. Without torchrun (WORLD_SIZE unset or 1)
nothing here changes a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


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

    # Collectives; each is a no-op in a world of one.
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


def info() -> DistInfo:
    """Rank, world size and local rank of the process group this process belongs to (or 0, 1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    nccl on CUDA (each rank on GPU LOCAL_RANK, made the current device so device='auto' or 'cuda'
    lands there), gloo on CPU. A world of one starts no group.
    """
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


class ShardedBatchSampler(Sampler[list]):
    """Per-rank shards of the global batches of one per-epoch-seeded draw (a DistributedSampler
    for `GroupUniformSampler` / `EpochShuffleSampler`).

    Every rank draws the same order from `sampler` (it depends only on seed and epoch; call
    `sampler.set_epoch(e)` as usual), cuts it into global batches of `batch_size` exactly as one
    process would, and keeps its contiguous slice of each: about `batch_size // world_size` items.
    A rank left with nothing in a short last batch gets one stand-in item whose `weight` is 0, so
    all ranks run the same number of steps (DDP needs that).

    `weight(k)`: the factor for rank's mean loss on batch k, `world * n_rank / n_global`. With it,
    DDP's average of the ranks' gradients is the gradient of the mean loss over the global batch,
    even when the shards are unequal.
    """

    def __init__(self, sampler: Sampler, batch_size: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if batch_size < world_size:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of processes ({world_size}); "
                             "every rank needs at least one image of each global batch")
        self.sampler, self.batch_size, self.rank, self.world_size = sampler, int(batch_size), rank, world_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _bounds(self, k: int) -> tuple[int, int, int]:
        """(start, stop) of this rank's slice of global batch k, and that batch's size."""
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


# The ordering of ranks around a run: rank 0 prepares (downloads, decodes, caches features), the
# others wait and then find everything cached. See `main_goes_first` and `training_starts`.
_WAITED_FOR_MAIN = False


def main_goes_first() -> None:
    """On ranks > 0: block until rank 0 reaches `train.fit` (its data and feature caches are then
    on disk), so the ranks read caches instead of building them at the same time."""
    global _WAITED_FOR_MAIN
    d = info()
    if d.enabled and not d.is_main:
        dist.barrier()  # matched by rank 0's barrier in training_starts()
        _WAITED_FOR_MAIN = True


def training_starts() -> None:
    """The first collective of `train.fit`: all ranks begin training together. A rank that already
    met rank 0 in `main_goes_first` skips it (that barrier was this one)."""
    global _WAITED_FOR_MAIN
    d = info()
    if not d.enabled:
        return
    if _WAITED_FOR_MAIN:
        _WAITED_FOR_MAIN = False
        return
    dist.barrier()


END_TO_END = ("finetune", "lp_ft", "vision_only")


def run(cfg, force: bool = False, progress: bool = True) -> dict | None:
    """`api.run(cfg)` across the process group: rank 0 returns the record, other ranks None.

    Outside a process group it is `api.run(cfg)`. Methods with no training loop (zero-shot,
    probes) run on rank 0 alone.
    """
    from . import api, results
    d = info()
    if not d.enabled:
        return api.run(cfg, force=force, progress=progress)
    cfg = cfg.validate()
    out = api.run_dir(cfg)
    done = not force and results.run_is_done(out, cfg.params())  # the same answer on every rank
    if done or getattr(cfg, "method", "zeroshot") not in END_TO_END:
        record = api.run(cfg, force=force, progress=progress) if d.is_main else None
        d.barrier()
        return record
    if d.is_main:
        record = api.run_finetune(cfg, force=force, progress=progress)
    else:
        main_goes_first()
        # The same run, with its record and predictions going to a private folder that is then
        # dropped: only rank 0's are kept. (fit takes the checkpoint path and parameters from rank 0.)
        with tempfile.TemporaryDirectory(prefix=f"clipdg-rank{d.rank}-") as tmp:
            api.run_finetune(dataclasses.replace(cfg, output_dir=tmp, save_predictions=False), force=True,
                             progress=False)
        record = None
    d.barrier()
    return record


def load_config(path: str | os.PathLike):
    """A config from a YAML file of flat parameters (`method: zeroshot` gives a ZeroShotConfig)."""
    import yaml

    from .config import FinetuneConfig, ZeroShotConfig, from_params
    params = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of parameters, got {type(params).__name__}")
    cls = ZeroShotConfig if params.get("method") == "zeroshot" else FinetuneConfig
    return from_params(cls, params)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipdg_nb.distributed",
        description="One run (the parameters of a notebook run) across the processes torchrun starts: "
                    "torchrun --nproc-per-node N -m clipdg_nb.distributed --config params.yaml")
    parser.add_argument("--config", required=True, help="YAML file of flat run parameters")
    parser.add_argument("--force", action="store_true", help="rerun even if result.json is there")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except (ValueError, FileNotFoundError) as err:
        print(f"clipdg_nb.distributed: error: {err}", file=sys.stderr)
        return 2
    if str(cfg.device).startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cfg.device = "cuda"  # each rank uses its own GPU (LOCAL_RANK), made current by init_from_env
    d = init_from_env()
    try:
        record = run(cfg, force=args.force, progress=not args.no_progress and d.is_main)
    finally:
        shutdown()
    if record is not None:
        from . import api
        print(f"{api.run_dir(cfg)}: " + ", ".join(f"{split}/{k}={v:.4f}" for split, m in record["metrics"].items()
                                                  for k, v in m.items() if k in ("acc_avg", "F1-macro_all")))
    return 0


if __name__ == "__main__":
    # Through the imported module, not this `__main__` copy: train.fit reads the imported one's state.
    from clipdg_nb.distributed import main as _main
    sys.exit(_main())
