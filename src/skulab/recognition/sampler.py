"""PK batches (P classes x K instances) for metric losses, via pytorch-metric-learning.

Rule, never a silent fallback: every class in the training split needs at least K crops and the
split needs at least P = batch_size / K classes, otherwise training stops with an error naming
the class or the numbers.
"""

from collections import Counter

import torch
from pytorch_metric_learning.samplers import MPerClassSampler

from skulab.errors import SkulabError


class PKSampler(MPerClassSampler):
    """MPerClassSampler that restarts each epoch from the same class order.

    The parent shuffles its class list in place, so epoch n depends on every earlier epoch and a
    resumed run would draw different batches; here an epoch depends only on the RNG state.
    """

    def __iter__(self):
        self.labels.sort()
        return super().__iter__()


def pk_sampler(labels: torch.Tensor, class_names: list[str], batch_size: int, k: int) -> PKSampler:
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
    length = len(labels) // batch_size * batch_size
    return PKSampler(labels, m=k, batch_size=batch_size, length_before_new_iter=max(length, batch_size))
