"""PK batches (P classes x K instances) for metric losses, via pytorch-metric-learning.

Rule, never a silent fallback: every class in the training split needs at least K crops and the
split needs at least P = batch_size / K classes, otherwise training stops with an error naming
the class or the numbers.

A cell on several processes (world_size > 1) draws each step's global batch of batch_size crops
from its own generator, seeded by (seed, epoch), and gives every rank one contiguous slice of it:
with PK batches a slice is P / world_size whole classes x K, so ranks never share a class (or a
crop) within a step. The single-process samplers are left exactly as they were.
"""

from collections import Counter

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import Sampler

from skulab.errors import SkulabError


class PKSampler(MPerClassSampler):
    """MPerClassSampler that restarts each epoch from the same class order.

    The parent shuffles its class list in place, so epoch n depends on every earlier epoch and a
    resumed run would draw different batches; here an epoch depends only on the RNG state.
    """

    def __iter__(self):
        self.labels.sort()
        return super().__iter__()


def _check_pk(labels: torch.Tensor, class_names: list[str], batch_size: int, k: int) -> None:
    counts = Counter(labels.tolist())
    p = batch_size // k
    if len(counts) < p:
        raise SkulabError(
            f"recognizer: a PK batch needs P={p} classes (batch_size {batch_size} / sampler_k {k}) "
            f"but the train split has {len(counts)}; lower batch_size or raise sampler_k"
        )
    short = sorted((n, class_names[c]) for c, n in counts.items() if n < k)
    if short:
        n, name = short[0]
        raise SkulabError(
            f"recognizer: class '{name}' has {n} train crops, fewer than sampler_k={k} "
            f"({len(short)} classes short); lower sampler_k or add data"
        )


def pk_sampler(labels: torch.Tensor, class_names: list[str], batch_size: int, k: int) -> PKSampler:
    _check_pk(labels, class_names, batch_size, k)
    length = len(labels) // batch_size * batch_size
    return PKSampler(labels, m=k, batch_size=batch_size, length_before_new_iter=max(length, batch_size))


class GlobalBatchShards(Sampler[int]):
    """One rank's share of each step's global batch (batch_size indices), as a flat index stream.

    Every rank computes the same global batches from (seed, epoch) and takes slice `rank` of
    world_size equal slices, so a DataLoader with batch_size // world_size and drop_last gives it
    one slice per step, and all ranks take the same number of steps. Call set_epoch before each epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.num_samples, self.batch_size, self.rank, self.world_size, self.seed = num_samples, batch_size, rank, world_size, seed
        self.epoch = 0

    @property
    def per_rank(self) -> int:
        return self.batch_size // self.world_size

    @property
    def steps(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def global_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def rank_batches(self) -> list[list[int]]:
        start = self.rank * self.per_rank
        return [batch[start : start + self.per_rank] for batch in self.global_batches()]

    def __iter__(self):
        return iter([index for batch in self.rank_batches() for index in batch])

    def __len__(self) -> int:
        return self.steps * self.per_rank


class DistributedShuffleSampler(GlobalBatchShards):
    """A shuffled epoch cut into global batches (the last partial one dropped, as the single-process loader)."""

    def global_batches(self) -> list[list[int]]:
        order = self.generator().permutation(self.num_samples).tolist()
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.steps)]


class DistributedPKSampler(GlobalBatchShards):
    """PK batches on several ranks: each step P = batch_size / K classes x K crops in all, P / world_size classes per rank.

    As the single-process sampler: an epoch has max(N // batch_size, 1) steps, each step picks P
    distinct classes at random and K distinct crops of each.
    """

    def __init__(self, labels: torch.Tensor, class_names: list[str], batch_size: int, k: int, rank: int, world_size: int, seed: int):
        _check_pk(labels, class_names, batch_size, k)
        p = batch_size // k
        if p % world_size:
            raise ValueError(f"P = batch_size {batch_size} / sampler_k {k} = {p} classes do not split over world_size {world_size}")
        super().__init__(len(labels), batch_size, rank, world_size, seed)
        self.k, self.p = k, p
        values = labels.tolist()
        self.classes = sorted(set(values))
        self.members = {c: np.array([i for i, label in enumerate(values) if label == c]) for c in self.classes}

    @property
    def steps(self) -> int:
        return max(self.num_samples // self.batch_size, 1)

    def global_batches(self) -> list[list[int]]:
        rng = self.generator()
        batches = []
        for _ in range(self.steps):
            batch = []
            for c in rng.permutation(self.classes)[: self.p].tolist():
                batch += rng.choice(self.members[c], size=self.k, replace=False).tolist()
            batches.append(batch)
        return batches
