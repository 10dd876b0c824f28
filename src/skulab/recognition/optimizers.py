"""Optimizers by name, from torch.optim and pytorch_optimizer (Lookahead, Ranger with GC)."""

import torch
from pytorch_optimizer import Lookahead, Ranger


def adam(params, cfg):
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def adamw(params, cfg):
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def sgd(params, cfg):
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay
    )


def radam(params, cfg):
    return torch.optim.RAdam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def radam_lookahead(params, cfg):
    return Lookahead(radam(params, cfg), k=cfg.lookahead_k, alpha=cfg.lookahead_alpha)


def ranger(params, cfg):
    """RAdam + Lookahead + gradient centralization, as in Ranger (pytorch_optimizer)."""
    return Ranger(
        params,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        k=cfg.lookahead_k,
        alpha=cfg.lookahead_alpha,
        use_gc=True,
    )


OPTIMIZERS = {f.__name__: f for f in (adam, adamw, sgd, radam, radam_lookahead, ranger)}


def create_optimizer(params, cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](params, cfg)
