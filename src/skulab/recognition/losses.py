"""Losses by name and their weighted sums, written in params as `{name: weight}`.

Classification losses read the classifier logits; metric losses (pytorch-metric-learning) read the
embedding before the BNNeck and need a PK batch (see sampler.py) so every anchor has a positive
and a negative.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners


@dataclass(frozen=True)
class LossInfo:
    """One table entry: its builder, the config keys it reads, and its kind (what it reads from the head)."""

    name: str
    build: Callable  # config -> (RecognizerOutput, labels) -> loss
    reads: frozenset[str]
    kind: str  # "classification" (logits) or "metric" (embedding, PK batches)
    description: str
    ignores: Callable = lambda cfg: {}  # config -> {key in reads it leaves unused here: why}


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


def _table(*infos: LossInfo) -> dict[str, LossInfo]:
    return {info.name: info for info in infos}


_PK = {"sampler_k"}  # metric losses train on PK batches
LOSSES = _table(
    LossInfo("ce", ce, frozenset(), "classification", "cross-entropy"),
    LossInfo("ce_label_smoothing", ce_label_smoothing, frozenset({"label_smoothing"}), "classification", "cross-entropy with label smoothing"),
    LossInfo(
        "triplet",
        triplet,
        frozenset({"triplet_margin", "triplet_soft_margin"} | _PK),
        "metric",
        "batch-hard triplet, hinge margin or soft margin",
        ignores=lambda cfg: {"triplet_margin": "triplet_soft_margin is true"} if cfg.triplet_soft_margin else {},
    ),
    LossInfo(
        "multi_similarity",
        multi_similarity,
        frozenset({"ms_alpha", "ms_beta", "ms_base", "ms_miner_epsilon"} | _PK),
        "metric",
        "multi-similarity loss with its pair miner",
    ),
)
CLASSIFICATION_LOSSES = frozenset(name for name, info in LOSSES.items() if info.kind == "classification")
METRIC_LOSSES = frozenset(name for name, info in LOSSES.items() if info.kind == "metric")


class WeightedLoss:
    """sum(weight * loss) over the configured losses; also returns each term for logging."""

    def __init__(self, cfg):
        self.terms = {name: (weight, LOSSES[name].build(cfg)) for name, weight in cfg.loss.items() if weight > 0}

    def __call__(self, out, labels) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {name: fn(out, labels) for name, (_, fn) in self.terms.items()}
        total = sum(self.terms[name][0] * value for name, value in parts.items())
        return total, {name: value.item() for name, value in parts.items()}


def active_losses(loss: dict[str, float]) -> list[str]:
    return [name for name, weight in loss.items() if weight > 0]


def uses_metric_loss(loss: dict[str, float]) -> bool:
    return any(name in METRIC_LOSSES for name in active_losses(loss))


def uses_classifier(loss: dict[str, float]) -> bool:
    return any(name in CLASSIFICATION_LOSSES for name in active_losses(loss))
