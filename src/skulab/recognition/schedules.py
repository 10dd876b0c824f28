"""LR schedules by name, composed from torch.optim.lr_scheduler and stepped once per iteration.

warmup_multistep: lr = base * w(t) * gamma ** (number of milestones <= t)
warmup_cosine:    lr = end + (base - end) * (1 + cos(pi * (t - W) / (T - W))) / 2 after warmup
where w(t) rises linearly from warmup_factor to 1 over W iterations (or stays at warmup_factor
for `constant` warmup). Milestones are given in epochs and converted to iterations.
"""

from torch.optim import lr_scheduler as sched


def _warmup(optimizer, cfg, warmup_iters):
    if cfg.warmup_method == "linear":
        return sched.LinearLR(optimizer, start_factor=cfg.warmup_factor, end_factor=1.0, total_iters=warmup_iters)
    return sched.ConstantLR(optimizer, factor=cfg.warmup_factor, total_iters=warmup_iters)


def _with_warmup(optimizer, cfg, warmup_iters, main):
    if warmup_iters == 0:
        return main
    return sched.SequentialLR(optimizer, [_warmup(optimizer, cfg, warmup_iters), main], milestones=[warmup_iters])


def constant(optimizer, cfg, iters_per_epoch):
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


def warmup_multistep(optimizer, cfg, iters_per_epoch):
    warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
    milestones = [round(m * iters_per_epoch) - warmup_iters for m in cfg.milestones]
    main = sched.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    return _with_warmup(optimizer, cfg, warmup_iters, main)


def warmup_cosine(optimizer, cfg, iters_per_epoch):
    warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
    total_iters = cfg.epochs * iters_per_epoch
    main = sched.CosineAnnealingLR(optimizer, T_max=total_iters - warmup_iters, eta_min=cfg.lr * cfg.end_lr_factor)
    return _with_warmup(optimizer, cfg, warmup_iters, main)


SCHEDULES = {f.__name__: f for f in (constant, warmup_multistep, warmup_cosine)}


def create_schedule(optimizer, cfg, iters_per_epoch: int) -> sched.LRScheduler:
    return SCHEDULES[cfg.schedule](optimizer, cfg, iters_per_epoch)
