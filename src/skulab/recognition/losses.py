"""Losses by name and their weighted sums, written in params as `{name: weight}`.

Classification losses read the classifier logits; metric losses (pytorch-metric-learning) read the
embedding before the BNNeck and need a PK batch (see sampler.py) so every anchor has a positive
and a negative. Each loss is a builder here plus its record in skulab/axes.py (the keys it reads,
its kind, a description); the kind helpers below read the records.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners

from skulab import axes
from skulab.axes import active_losses, losses_of_kind, uses_classifier, uses_metric_loss  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class LossInfo(axes.Built):
    """One table entry: its record (name, reads, kind: classification (logits) or metric (embedding, PK
    batches), description, ignores) and its builder, config -> (RecognizerOutput, labels) -> loss."""


def ce(cfg):
    return lambda out, labels: F.cross_entropy(out.logits, labels)


def ce_label_smoothing(cfg):
    return lambda out, labels: F.cross_entropy(out.logits, labels, label_smoothing=cfg.label_smoothing)


def _mined(loss_fn, miner):
    def compute(out, labels):
        return loss_fn(out.embedding, labels, miner(out.embedding, labels))

    return compute


def triplet(cfg):
    """Batch-hard triplet: the hardest positive and negative for each anchor.

    Soft margin is the standard one (Hermans et al. 2017), softplus(d_ap - d_an) with no margin:
    pytorch-metric-learning's smooth_loss computes softplus(d_ap - d_an + margin), so margin is 0.
    """
    if cfg.triplet_soft_margin:
        loss = pml_losses.TripletMarginLoss(margin=0.0, smooth_loss=True)
    else:
        loss = pml_losses.TripletMarginLoss(margin=cfg.triplet_margin)
    return _mined(loss, miners.BatchHardMiner())


def multi_similarity(cfg):
    loss = pml_losses.MultiSimilarityLoss(alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base)
    return _mined(loss, miners.MultiSimilarityMiner(epsilon=cfg.ms_miner_epsilon))


LOSSES = axes.full_table("losses", axes.LOSSES, LossInfo, ce, ce_label_smoothing, triplet, multi_similarity)
CLASSIFICATION_LOSSES = losses_of_kind("classification")
METRIC_LOSSES = losses_of_kind("metric")


class WeightedLoss:
    """sum(weight * loss) over the configured losses; also returns each term for logging."""

    def __init__(self, cfg):
        self.terms = {name: (weight, LOSSES[name].build(cfg)) for name, weight in cfg.loss.items() if weight > 0}

    def __call__(self, out, labels) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {name: fn(out, labels) for name, (_, fn) in self.terms.items()}
        total = sum(self.terms[name][0] * value for name, value in parts.items())
        return total, {name: value.item() for name, value in parts.items()}
