"""LR schedules by name, composed from torch.optim.lr_scheduler and stepped once per iteration.

warmup_multistep: lr = base * w(t) * gamma ** (number of milestones <= t)
warmup_cosine:    lr = end + (base - end) * (1 + cos(pi * (t - W) / (T - W))) / 2 after warmup
where w(t) rises linearly from warmup_factor to 1 over W iterations (or stays at warmup_factor
for `constant` warmup). Epochs are converted to iterations by rounding, which needs the
iterations per epoch: a warm-up or milestone that the rounding erases stops training with an error.
"""

from dataclasses import dataclass

from torch.optim import lr_scheduler as sched

from skulab import axes
from skulab.axes import schedule_iterations


@dataclass(frozen=True)
class ScheduleInfo(axes.Built):
    """One table entry: its record (name, reads, description, its epochs-to-iterations arithmetic) and
    its builder, (optimizer, config, iterations per epoch) -> LRScheduler."""


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
    it = axes.multistep_iterations(cfg, iters_per_epoch)
    main = sched.MultiStepLR(optimizer, milestones=[a - it.warmup for a in it.milestones], gamma=cfg.gamma)
    return _with_warmup(optimizer, cfg, it.warmup, main)


def warmup_cosine(optimizer, cfg, iters_per_epoch):
    it = axes.cosine_iterations(cfg, iters_per_epoch)
    main = sched.CosineAnnealingLR(optimizer, T_max=it.total - it.warmup, eta_min=cfg.lr * cfg.end_lr_factor)
    return _with_warmup(optimizer, cfg, it.warmup, main)


SCHEDULES = axes.full_table("schedules", axes.SCHEDULES, ScheduleInfo, constant, warmup_multistep, warmup_cosine)


def create_schedule(optimizer, cfg, iters_per_epoch: int) -> sched.LRScheduler:
    schedule_iterations(cfg, iters_per_epoch)  # refuses what rounding to iterations erases (as `skulab check`)
    return SCHEDULES[cfg.schedule].build(optimizer, cfg, iters_per_epoch)
