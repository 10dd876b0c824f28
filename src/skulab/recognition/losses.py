"""Losses by name and their weighted sums, written in params as `{name: weight}`.

Classification losses read the classifier logits; metric losses (pytorch-metric-learning) read the
embedding before the BNNeck and need a PK batch (see sampler.py) so every anchor has a positive
and a negative.
"""

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners


def ce(cfg):
    return lambda out, labels: F.cross_entropy(out.logits, labels)


def ce_label_smoothing(cfg):
    return lambda out, labels: F.cross_entropy(out.logits, labels, label_smoothing=cfg.label_smoothing)


def _mined(loss_fn, miner):
    def compute(out, labels):
        return loss_fn(out.embedding, labels, miner(out.embedding, labels))

    return compute


def triplet(cfg):
    """Batch-hard triplet: the hardest positive and negative for each anchor; soft margin optional."""
    loss = pml_losses.TripletMarginLoss(margin=cfg.triplet_margin, smooth_loss=cfg.triplet_soft_margin)
    return _mined(loss, miners.BatchHardMiner())


def multi_similarity(cfg):
    loss = pml_losses.MultiSimilarityLoss(alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base)
    return _mined(loss, miners.MultiSimilarityMiner(epsilon=cfg.ms_miner_epsilon))


LOSSES = {f.__name__: f for f in (ce, ce_label_smoothing, triplet, multi_similarity)}
CLASSIFICATION_LOSSES = frozenset({"ce", "ce_label_smoothing"})
METRIC_LOSSES = frozenset({"triplet", "multi_similarity"})


class WeightedLoss:
    """sum(weight * loss) over the configured losses; also returns each term for logging."""

    def __init__(self, cfg):
        self.terms = {name: (weight, LOSSES[name](cfg)) for name, weight in cfg.loss.items() if weight > 0}

    def __call__(self, out, labels) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {name: fn(out, labels) for name, (_, fn) in self.terms.items()}
        total = sum(self.terms[name][0] * value for name, value in parts.items())
        return total, {name: value.item() for name, value in parts.items()}


def uses_metric_loss(loss: dict[str, float]) -> bool:
    return any(weight > 0 and name in METRIC_LOSSES for name, weight in loss.items())


def uses_classifier(loss: dict[str, float]) -> bool:
    return any(weight > 0 and name in CLASSIFICATION_LOSSES for name, weight in loss.items())

