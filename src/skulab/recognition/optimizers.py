"""Optimizers by name, from torch.optim and pytorch_optimizer, behind one solver builder.

`create_optimizer` owns the parameter-group policy, so every optimizer is compared on the same
groups: 1-D parameters (norm layers, biases, the BNNeck) get no weight decay unless
`decay_norm_and_bias` (timm's `param_groups_weight_decay`, as timm and fast-reid do).

Each optimizer is a builder here plus its record in skulab/axes.py (the keys it reads, its kind =
its weight-decay form, a description). Weight decay comes in two forms (`kind`, also `decay`):
  L2        weight_decay * p is added to the gradient, so adaptive methods rescale it;
  decoupled p *= 1 - lr * weight_decay, apart from the gradient (AdamW).
The RAdam family (radam, radam_lookahead, ranger) shares the form and eps, so `radam_lookahead`
differs from `radam` only by Lookahead and `ranger` from `radam_lookahead` only by gradient
centralization.
"""

from dataclasses import dataclass

import torch
from pytorch_optimizer import Lookahead, Ranger
from timm.optim import param_groups_weight_decay
from torch import nn

from skulab import axes

EPS = 1e-8  # torch.optim's default, for every adaptive optimizer here (Ranger's own default is 1e-5)
RADAM_THRESHOLD = 5  # RAdam rectifies once its variance estimate's length rho_t exceeds 5 (torch.optim.RAdam)


@dataclass(frozen=True)
class OptimizerInfo(axes.Built):
    """One table entry: its record (name, reads, kind = weight-decay form, description) and its builder,
    (param groups, config) -> optimizer."""

    @property
    def decay(self) -> str:
        return self.entry.kind  # "L2" or "decoupled" (module docstring)


# Every optimizer reads these through create_optimizer.
COMMON_KEYS = axes.OPTIMIZER_COMMON_KEYS


def adam(groups, cfg):
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=EPS, weight_decay=cfg.weight_decay)


def adamw(groups, cfg):
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=EPS, weight_decay=cfg.weight_decay)


def sgd(groups, cfg):
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay
    )


def radam(groups, cfg):
    return torch.optim.RAdam(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=EPS, weight_decay=cfg.weight_decay, decoupled_weight_decay=False
    )


def radam_lookahead(groups, cfg):
    """Lookahead keeps its slow weights in its state_dict (pytorch_optimizer's `lookahead_state`)."""
    return Lookahead(radam(groups, cfg), k=cfg.lookahead_k, alpha=cfg.lookahead_alpha)


def ranger(groups, cfg):
    """Ranger as lessw2020's ranger2020.py: RAdam + Lookahead + gradient centralization of conv and
    linear weights (every parameter with more than one dimension; biases and norms are left alone).

    degenerated_to_sgd=True makes the first steps, while RAdam's variance is intractable, the
    un-adapted momentum step lr * exp_avg / (1 - beta1^t) of the original and of torch.optim.RAdam;
    pytorch_optimizer's default (False) steps uphill there (kozistr/pytorch_optimizer#232).
    L2 decay and EPS as `radam`, so only gradient centralization sets it apart from radam_lookahead.
    """
    return Ranger(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=EPS,
        weight_decay=cfg.weight_decay,
        weight_decouple=False,
        k=cfg.lookahead_k,
        alpha=cfg.lookahead_alpha,
        n_sma_threshold=RADAM_THRESHOLD,
        degenerated_to_sgd=True,
        use_gc=True,
        gc_conv_only=False,
    )


OPTIMIZERS = axes.full_table("optimizers", axes.OPTIMIZERS, OptimizerInfo, adam, adamw, sgd, radam, radam_lookahead, ranger)


def param_groups(model: nn.Module, cfg) -> list[dict]:
    """The trainable parameters in groups with their weight decay: 1-D ones without, unless decay_norm_and_bias."""
    if cfg.decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    return param_groups_weight_decay(model, cfg.weight_decay)


def create_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer].build(param_groups(model, cfg), cfg)
