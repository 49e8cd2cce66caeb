"""Samplers: the order of epoch e depends only on (seed, e), so a resumed run replays it with no
sampler state to save. DataLoader takes any sized iterable as a sampler; call set_epoch(e) first."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


class GroupUniformSampler:
    """`num_samples` positions per epoch with replacement, uniform over groups (each group equally
    likely, then uniform within it), as the reference study's WILDS group sampler."""

    def __init__(self, groups: Sequence[int], seed: int, num_samples: int | None = None):
        groups = np.asarray(groups)
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        self.weights = 1.0 / (len(counts) * counts[inverse])
        self.num_samples, self.seed, self.epoch = int(num_samples or len(groups)), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        weights = torch.as_tensor(self.weights, dtype=torch.double)
        return iter(torch.multinomial(weights, self.num_samples, replacement=True, generator=gen).tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler:
    """Plain shuffling whose order depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


SAMPLERS = {"group_uniform": lambda groups, seed: GroupUniformSampler(groups, seed),
            "shuffle": lambda groups, seed: EpochShuffleSampler(len(groups), seed)}
