"""LR schedules by name, composed from torch.optim.lr_scheduler and stepped once per iteration.

warmup_multistep: lr = base * w(t) * gamma ** (number of milestones <= t)
warmup_cosine:    lr = end + (base - end) * (1 + cos(pi * (t - W) / (T - W))) / 2 after warmup
where w(t) rises linearly from warmup_factor to 1 over W iterations (or stays at warmup_factor
for `constant` warmup). Epochs are converted to iterations by rounding, which needs the
iterations per epoch: a warm-up or milestone that the rounding erases stops training with an error.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch.optim import lr_scheduler as sched

from skulab.errors import SkulabError


@dataclass(frozen=True)
class ScheduleInfo:
    """One table entry: its builder and the config keys it reads."""

    name: str
    build: Callable  # (optimizer, config, iterations per epoch) -> LRScheduler
    reads: frozenset[str]
    description: str
    ignores: Callable = lambda cfg: {}  # config -> {key in reads it leaves unused here: why}


def _iters(epochs: float, iters_per_epoch: int) -> int:
    return round(epochs * iters_per_epoch)


def _warmup_iters(cfg, iters_per_epoch: int) -> int:
    warmup_iters = _iters(cfg.warmup_epochs, iters_per_epoch)
    if cfg.warmup_epochs > 0 and warmup_iters == 0:
        raise SkulabError(
            f"recognizer: warmup_epochs {cfg.warmup_epochs:g} is 0 warm-up iterations at {iters_per_epoch} "
            f"iterations per epoch; set warmup_epochs to 0 or at least {1 / iters_per_epoch:.3g}"
        )
    return warmup_iters


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
    warmup_iters = _warmup_iters(cfg, iters_per_epoch)
    at = [_iters(m, iters_per_epoch) for m in cfg.milestones]
    if any(a <= b for a, b in zip(at, [warmup_iters, *at])):
        raise SkulabError(
            f"recognizer: milestones {cfg.milestones} are iterations {at} at {iters_per_epoch} iterations per epoch, "
            f"not increasing after the {warmup_iters} warm-up iterations; space them further apart"
        )
    main = sched.MultiStepLR(optimizer, milestones=[a - warmup_iters for a in at], gamma=cfg.gamma)
    return _with_warmup(optimizer, cfg, warmup_iters, main)


def warmup_cosine(optimizer, cfg, iters_per_epoch):
    warmup_iters = _warmup_iters(cfg, iters_per_epoch)
    total_iters = cfg.epochs * iters_per_epoch
    if warmup_iters >= total_iters:
        raise SkulabError(f"recognizer: warmup_epochs {cfg.warmup_epochs:g} rounds to the whole {total_iters} iterations; shorten it")
    main = sched.CosineAnnealingLR(optimizer, T_max=total_iters - warmup_iters, eta_min=cfg.lr * cfg.end_lr_factor)
    return _with_warmup(optimizer, cfg, warmup_iters, main)


def _table(*infos: ScheduleInfo) -> dict[str, ScheduleInfo]:
    return {info.name: info for info in infos}


_WARMUP = frozenset({"warmup_epochs", "warmup_method", "warmup_factor"})


def _warmup_off(cfg) -> dict[str, str]:
    return {key: "warmup_epochs is 0" for key in ("warmup_method", "warmup_factor")} if cfg.warmup_epochs == 0 else {}


SCHEDULES = _table(
    ScheduleInfo("constant", constant, frozenset(), "the base lr throughout"),
    ScheduleInfo(
        "warmup_multistep", warmup_multistep, _WARMUP | {"milestones", "gamma"}, "warm-up, then lr x gamma at each milestone", _warmup_off
    ),
    ScheduleInfo(
        "warmup_cosine", warmup_cosine, _WARMUP | {"end_lr_factor"}, "warm-up, then cosine decay to lr x end_lr_factor", _warmup_off
    ),
)


def create_schedule(optimizer, cfg, iters_per_epoch: int) -> sched.LRScheduler:
    if iters_per_epoch < 1:
        raise SkulabError("recognizer: 0 iterations per epoch (the train split is smaller than batch_size); lower batch_size")
    return SCHEDULES[cfg.schedule].build(optimizer, cfg, iters_per_epoch)
