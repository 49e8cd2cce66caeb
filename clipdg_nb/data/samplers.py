"""Samplers: the order of epoch e depends only on (seed, e), so a resumed run replays it with no
sampler state to save. DataLoader takes any sized iterable as a sampler; call set_epoch(e) first."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


class EpochShuffleSampler:
    """Plain shuffling of `n` positions whose order depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self):
        import torch
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        import torch
        return iter(torch.randperm(self.n, generator=self.generator()).tolist())

    def __len__(self) -> int:
        return self.n


class GroupUniformSampler(EpochShuffleSampler):
    """`num_samples` positions per epoch with replacement, uniform over groups (each group equally
    likely, then uniform within it), as the reference study's WILDS group sampler."""

    def __init__(self, groups: Sequence[int], seed: int, num_samples: int | None = None):
        groups = np.asarray(groups)
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        self.weights = 1.0 / (len(counts) * counts[inverse])
        super().__init__(num_samples or len(groups), seed)

    def __iter__(self) -> Iterator[int]:
        import torch
        weights = torch.as_tensor(self.weights, dtype=torch.double)
        return iter(torch.multinomial(weights, self.n, replacement=True, generator=self.generator()).tolist())


SAMPLERS = {"group_uniform": lambda groups, seed: GroupUniformSampler(groups, seed),
            "shuffle": lambda groups, seed: EpochShuffleSampler(len(groups), seed)}
