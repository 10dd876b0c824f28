"""Every ablation axis as a table of small records, without torch, timm or mmdet.

An entry says what a method is, not how to build it: its name, the config keys it reads (which
may ignore some of them for a given config, `ignores`), its kind where the axis has kinds, and one
line of description. params.py validates names and variant keys against these tables only, so
`skulab check` needs no model library; the model modules (recognition/losses.py, optimizers.py,
schedules.py, augment.py, backbones.py) pair each entry with its builder through `builders`, which
refuses a builder table whose names differ from the light one.

Adding a loss is one builder function in recognition/losses.py plus one `Entry` in LOSSES here;
what depends on its kind (the PK sampler, the model selection metric, the variant check) reads it
from the entry.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from skulab.errors import SkulabError


def _ignores_nothing(cfg: Any) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Entry:
    """One method of an axis: the config keys it reads, its kind (None where the axis has none), one line."""

    name: str
    reads: frozenset[str]
    description: str
    kind: str | None = None
    ignores: Callable[[Any], dict[str, str]] = _ignores_nothing  # config -> {key in reads it leaves unused: why}


@dataclass(frozen=True)
class BackboneEntry(Entry):
    timm_name: str = ""  # the timm model it builds


@dataclass(frozen=True)
class DetectorEntry(Entry):
    config: str = ""  # its mmdet config file, relative to the repo root


class Iterations(NamedTuple):
    """A schedule's epochs as iterations: warm-up length, milestones (absolute), total."""

    warmup: int
    milestones: tuple[int, ...]
    total: int


@dataclass(frozen=True)
class ScheduleEntry(Entry):
    # (config, iterations per epoch) -> Iterations; raises SkulabError where rounding erases a warm-up or milestone
    iterations: Callable[[Any, int], Iterations] = field(default=lambda cfg, iters_per_epoch: Iterations(0, (), cfg.epochs * iters_per_epoch))


def _table(*entries: Entry) -> dict[str, Entry]:
    return {entry.name: entry for entry in entries}


# --- losses: {name: weight}; classification losses read the logits, metric losses the embedding (PK batches)

LOSS_KINDS = ("classification", "metric")
_PK = frozenset({"sampler_k"})  # metric losses train on PK batches

LOSSES = _table(
    Entry("ce", frozenset(), "cross-entropy", "classification"),
    Entry("ce_label_smoothing", frozenset({"label_smoothing"}), "cross-entropy with label smoothing", "classification"),
    Entry(
        "triplet",
        frozenset({"triplet_margin", "triplet_soft_margin"}) | _PK,
        "batch-hard triplet, hinge margin or soft margin",
        "metric",
        ignores=lambda cfg: {"triplet_margin": "triplet_soft_margin is true"} if cfg.triplet_soft_margin else {},
    ),
    Entry(
        "multi_similarity",
        frozenset({"ms_alpha", "ms_beta", "ms_base", "ms_miner_epsilon"}) | _PK,
        "multi-similarity loss with its pair miner",
        "metric",
    ),
)


def losses_of_kind(kind: str) -> frozenset[str]:
    """The registered losses of one kind, read from the table now (so a newly registered loss counts)."""
    return frozenset(name for name, entry in LOSSES.items() if entry.kind == kind)


def active_losses(loss: Mapping[str, float]) -> list[str]:
    return [name for name, weight in loss.items() if weight > 0]


def uses_metric_loss(loss: Mapping[str, float]) -> bool:
    """A metric loss is on: batches are PK batches."""
    return any(LOSSES[name].kind == "metric" for name in active_losses(loss))


def uses_classifier(loss: Mapping[str, float]) -> bool:
    """A classification loss is on: the classifier is trained, and val_top1 selects the checkpoint."""
    return any(LOSSES[name].kind == "classification" for name in active_losses(loss))


# --- optimizers; kind = the weight-decay form: L2 (added to the gradient) or decoupled (AdamW)

OPTIMIZER_KINDS = ("L2", "decoupled")
OPTIMIZER_COMMON_KEYS = frozenset({"lr", "weight_decay", "decay_norm_and_bias"})  # read through create_optimizer
_ADAPTIVE = frozenset({"betas"})
_LOOKAHEAD = frozenset({"lookahead_k", "lookahead_alpha"})

OPTIMIZERS = _table(
    Entry("adam", OPTIMIZER_COMMON_KEYS | _ADAPTIVE, "torch.optim.Adam", "L2"),
    Entry("adamw", OPTIMIZER_COMMON_KEYS | _ADAPTIVE, "torch.optim.AdamW", "decoupled"),
    Entry("sgd", OPTIMIZER_COMMON_KEYS | {"momentum"}, "torch.optim.SGD, Nesterov when momentum > 0", "L2"),
    Entry("radam", OPTIMIZER_COMMON_KEYS | _ADAPTIVE, "torch.optim.RAdam", "L2"),
    Entry("radam_lookahead", OPTIMIZER_COMMON_KEYS | _ADAPTIVE | _LOOKAHEAD, "radam inside pytorch_optimizer's Lookahead", "L2"),
    Entry(
        "ranger", OPTIMIZER_COMMON_KEYS | _ADAPTIVE | _LOOKAHEAD, "radam_lookahead + gradient centralization (pytorch_optimizer.Ranger)", "L2"
    ),
)


# --- LR schedules, stepped per iteration: epochs become iterations by rounding (pure arithmetic here,
# shared by recognition/schedules.py and `skulab check`)


def epochs_to_iterations(epochs: float, iters_per_epoch: int) -> int:
    return round(epochs * iters_per_epoch)


def warmup_iterations(cfg, iters_per_epoch: int) -> int:
    warmup_iters = epochs_to_iterations(cfg.warmup_epochs, iters_per_epoch)
    if cfg.warmup_epochs > 0 and warmup_iters == 0:
        raise SkulabError(
            f"recognizer: warmup_epochs {cfg.warmup_epochs:g} is 0 warm-up iterations at {iters_per_epoch} "
            f"iterations per epoch; set warmup_epochs to 0 or at least {1 / iters_per_epoch:.3g}"
        )
    return warmup_iters


def multistep_iterations(cfg, iters_per_epoch: int) -> Iterations:
    warmup_iters = warmup_iterations(cfg, iters_per_epoch)
    at = [epochs_to_iterations(m, iters_per_epoch) for m in cfg.milestones]
    if any(a <= b for a, b in zip(at, [warmup_iters, *at])):
        raise SkulabError(
            f"recognizer: milestones {cfg.milestones} are iterations {at} at {iters_per_epoch} iterations per epoch, "
            f"not increasing after the {warmup_iters} warm-up iterations; space them further apart"
        )
    return Iterations(warmup_iters, tuple(at), cfg.epochs * iters_per_epoch)


def cosine_iterations(cfg, iters_per_epoch: int) -> Iterations:
    warmup_iters = warmup_iterations(cfg, iters_per_epoch)
    total_iters = cfg.epochs * iters_per_epoch
    if warmup_iters >= total_iters:
        raise SkulabError(f"recognizer: warmup_epochs {cfg.warmup_epochs:g} rounds to the whole {total_iters} iterations; shorten it")
    return Iterations(warmup_iters, (), total_iters)


def schedule_iterations(cfg, iters_per_epoch: int) -> Iterations:
    """The iterations of cfg's schedule, or the SkulabError its builder would raise (no torch needed)."""
    if iters_per_epoch < 1:
        raise SkulabError("recognizer: 0 iterations per epoch (the train split is smaller than batch_size); lower batch_size")
    return SCHEDULES[cfg.schedule].iterations(cfg, iters_per_epoch)


_WARMUP = frozenset({"warmup_epochs", "warmup_method", "warmup_factor"})


def _warmup_off(cfg) -> dict[str, str]:
    return {key: "warmup_epochs is 0" for key in ("warmup_method", "warmup_factor")} if cfg.warmup_epochs == 0 else {}


SCHEDULES = _table(
    ScheduleEntry("constant", frozenset(), "the base lr throughout"),
    ScheduleEntry(
        "warmup_multistep",
        _WARMUP | {"milestones", "gamma"},
        "warm-up, then lr x gamma at each milestone",
        ignores=_warmup_off,
        iterations=multistep_iterations,
    ),
    ScheduleEntry(
        "warmup_cosine",
        _WARMUP | {"end_lr_factor"},
        "warm-up, then cosine decay to lr x end_lr_factor",
        ignores=_warmup_off,
        iterations=cosine_iterations,
    ),
)


# --- train-time augmentations (torchvision v2)

BASIC_RESIZE = 1.15  # basic (and the policies on top of it) resize to round(image_size x 1.15), then random-crop image_size


def basic_resize(image_size: int) -> int:
    """The side basic resizes to before its random crop."""
    return round(image_size * BASIC_RESIZE)


_SIZE = frozenset({"image_size"})
AUGMENTATIONS = _table(
    Entry("none", _SIZE, "resize to image_size only"),
    Entry("basic", _SIZE, f"resize to {BASIC_RESIZE:g} x image_size, random crop, horizontal flip"),
    Entry("autoaugment", _SIZE, "basic + AutoAugment (ImageNet policy)"),
    Entry("randaugment", _SIZE, "basic + RandAugment"),
    Entry("trivialaugment", _SIZE, "basic + TrivialAugmentWide"),
    Entry("timm", _SIZE, "timm's train default: RandomResizedCrop, flip, colour jitter 0.4"),
)


# --- backbones (timm; no classifier)

_PRETRAINED = frozenset({"pretrained"})
BACKBONES = _table(
    BackboneEntry("mobilenetv3_small", _PRETRAINED, "MobileNetV3-Small 1.0", timm_name="mobilenetv3_small_100"),
    BackboneEntry("mobilenetv3_large", _PRETRAINED, "MobileNetV3-Large 1.0", timm_name="mobilenetv3_large_100"),
    BackboneEntry("resnet18", _PRETRAINED, "ResNet-18", timm_name="resnet18"),
    BackboneEntry("resnet50", _PRETRAINED, "ResNet-50", timm_name="resnet50"),
    BackboneEntry("efficientnet_b0", _PRETRAINED, "EfficientNet-B0", timm_name="efficientnet_b0"),
)


# --- recognizer heads (recognition/head.py)

HEADS = _table(
    Entry("bnneck", frozenset({"embedding_dim"}), "embedding -> BNNeck -> classifier (bag-of-tricks re-id head)"),
    Entry("linear", frozenset(), "timm's classifier: one linear layer on the pooled backbone features (no embedding layer)"),
)


# --- detectors: one record per config file in configs/detectors/ (detection/config.py fills them in)

DETECTOR_KINDS = ("two_stage", "one_stage")
DETECTOR_COMMON_KEYS = frozenset({
    "config", "class_aware", "backbone_depth", "pretrained", "input_size", "fpn_channels", "max_per_img",
    "optimizer", "lr", "momentum", "weight_decay", "grad_clip", "warmup_iters", "warmup_factor", "milestones",
    "gamma", "epochs", "batch_size", "num_workers", "seed", "world_size",
})  # fmt: skip
# Read only where the model has an RPN and R-CNN heads (detection/config.py: _proposals, _widths, _test_output).
TWO_STAGE_KEYS = frozenset({"rpn_nms_pre", "rpn_max_per_img", "rcnn_sampler_num", "fc_out_channels", "roi_align"})
DETECTOR_CONFIGS = "configs/detectors"


def _detector(name: str, kind: str, description: str) -> DetectorEntry:
    reads = DETECTOR_COMMON_KEYS | (TWO_STAGE_KEYS if kind == "two_stage" else frozenset())
    return DetectorEntry(name, reads, description, kind, config=f"{DETECTOR_CONFIGS}/{name}.py")


DETECTORS = _table(
    _detector("faster_rcnn", "two_stage", "Faster R-CNN: RPN proposals, then RoI classification and box refinement"),
    _detector("cascade_rcnn", "two_stage", "Cascade R-CNN: three R-CNN stages at IoU 0.5, 0.6, 0.7"),
    _detector("retinanet", "one_stage", "RetinaNet: dense anchors with focal loss"),
    _detector("fcos", "one_stage", "FCOS: anchor-free, per-pixel boxes with centre-ness"),
    _detector("atss", "one_stage", "ATSS: anchors assigned by adaptive IoU statistics"),
)


def detector_for_config(path: str) -> DetectorEntry | None:
    """The record of a config file path (as written in params.yaml); None for a config no record describes."""
    wanted = PurePosixPath(path.replace("\\", "/"))
    for entry in DETECTORS.values():
        if PurePosixPath(entry.config) == wanted:
            return entry
    return None


# --- the axes, for `skulab list` and the variant check


@dataclass(frozen=True)
class Axis:
    name: str  # plural, as `skulab list <axis>` takes it
    label: str  # singular, as error messages say it
    section: str  # params.yaml section whose configs choose it
    key: str  # the config key choosing the entries
    kinds: tuple[str, ...]  # () where the axis has no kinds
    entries: dict[str, Entry]

    def common_reads(self) -> frozenset[str]:
        """Keys every entry reads."""
        return frozenset.intersection(*(e.reads for e in self.entries.values())) if self.entries else frozenset()


AXES = {
    axis.name: axis
    for axis in (
        Axis("losses", "loss", "recognizer", "loss", LOSS_KINDS, LOSSES),
        Axis("optimizers", "optimizer", "recognizer", "optimizer", OPTIMIZER_KINDS, OPTIMIZERS),
        Axis("schedules", "schedule", "recognizer", "schedule", (), SCHEDULES),
        Axis("augmentations", "augmentation", "recognizer", "augment", (), AUGMENTATIONS),
        Axis("backbones", "backbone", "recognizer", "backbone", (), BACKBONES),
        Axis("heads", "head", "recognizer", "head", (), HEADS),
        Axis("detectors", "detector", "detector", "config", DETECTOR_KINDS, DETECTORS),
    )
}


def describe(axes: Iterable[str] = tuple(AXES)) -> str:
    """`skulab list`: each axis's names with their kind, description and the keys they read."""
    blocks = []
    for axis in (AXES[name] for name in axes):
        common = axis.common_reads() if len(axis.entries) > 1 else frozenset()
        head = f"{axis.name} ({axis.section}.{axis.key}"
        head += f"; kinds: {' | '.join(axis.kinds)}" if axis.kinds else ""
        head += f"; every one reads {', '.join(sorted(common))}" if common else ""
        lines = [head + ")"]
        width = max(map(len, axis.entries), default=0)
        kind_width = max((len(e.kind or "") for e in axis.entries.values()), default=0)
        for entry in axis.entries.values():
            own = sorted(entry.reads - common)
            reads = f"reads {'also ' if common else ''}{', '.join(own)}" if own else ("reads nothing else" if common else "reads no key")
            kind = f"{entry.kind or '':<{kind_width}}  " if axis.kinds else ""
            extra = f" [timm {entry.timm_name}]" if isinstance(entry, BackboneEntry) else ""
            extra += f" [{entry.config}]" if isinstance(entry, DetectorEntry) else ""
            lines.append(f"  {entry.name:<{width}}  {kind}{entry.description}{extra}; {reads}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@dataclass(frozen=True)
class Built:
    """A model module's table entry: the light record and its builder; reads the record's fields through."""

    entry: Entry
    build: Callable

    def __getattr__(self, attr: str):
        if attr in ("entry", "build") or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.entry, attr)


def check_builders(axis: str, light: Mapping[str, Entry], full: Mapping[str, Any]) -> None:
    """Refuse a model module's builder table that does not name exactly the light table's entries."""
    missing, extra = [n for n in light if n not in full], [n for n in full if n not in light]
    if missing or extra:
        raise RuntimeError(
            f"{axis}: the builder table and skulab/axes.py disagree: no builder for {missing or 'none'}, "
            f"no record for {extra or 'none'}; a method is one builder plus one record"
        )


def full_table(axis: str, light: Mapping[str, Entry], info: type[Built], *functions: Callable) -> dict[str, Built]:
    """{name: info(record, builder)} in the light table's order; each builder is the function named like its record."""
    by_name = {f.__name__: f for f in functions}
    check_builders(axis, light, by_name)
    return {name: info(entry, by_name[name]) for name, entry in light.items()}
