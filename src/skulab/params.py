"""The params.yaml schema (pydantic) and its one-line error messages.

Every knob lives in params.yaml, so the schema has no defaults: a missing key is an error, not a
silent fallback. Each stage validates the sections it reads; `skulab check` validates them all. Method names and the
keys each method reads come from skulab/axes.py, so validating imports no model library.
"""

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from skulab import axes
from skulab.axes import active_losses, uses_metric_loss
from skulab.errors import SkulabError

PARAMS_FILE = "params.yaml"
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
Fraction = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]  # a moment decay rate: 1 would never forget (and divides by 0)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _choice(kind: str, table: dict):
    def check(value: str) -> str:
        if value not in table:
            raise ValueError(f"unknown {kind} '{value}'; allowed: {', '.join(table)}")
        return value

    return check


def _is_params_file(value: str, info: ValidationInfo) -> bool:
    """Paths in params are relative to the folder of params.yaml (the repo root)."""
    return (Path((info.context or {}).get("root", ".")) / value).is_file()


class MlflowParams(Strict):
    experiment: Name


class SplitCounts(Strict):
    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class SyntheticParams(Strict):
    num_classes: int = Field(ge=2, le=500)
    lookalike_group_size: int = Field(ge=1, le=6, description="SKUs sharing package shape and palette")
    scenes: SplitCounts
    width: int = Field(ge=128, le=4096)
    height: int = Field(ge=128, le=4096)
    shelf_rows: int = Field(ge=1, le=8)
    occlusion_prob: Fraction
    max_blur: float = Field(ge=0, le=5)
    lighting: float = Field(ge=0, le=0.9, description="max brightness change, as a fraction")


class SplitRatios(Strict):
    train: float = Field(gt=0, lt=1)
    val: float = Field(gt=0, lt=1)
    test: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class CocoSource(Strict):
    images: str = Field(description="images folder; COCO file_name is relative to it")
    annotations: dict[Literal["train", "val", "test"], str] | str = Field(
        description="one COCO JSON per split, or one file to split by split_ratios"
    )


class VocSource(Strict):
    classes: list[str] = Field(description="allowed class names in id order; empty = every name found, sorted")
    difficult: Literal["keep", "drop"] = Field(description="objects marked <difficult>1: drop (VOC protocol) or keep as boxes")


class YoloSource(Strict):
    data_yaml: str


class ExternalParams(Strict):
    """A user dataset under `path`, read when prepare.source is not synthetic."""

    path: str
    on_bad_item: Literal["error", "skip"]
    box_outside_image: Literal["clip", "reject"]
    split_ratios: SplitRatios
    coco: CocoSource
    voc: VocSource
    yolo: YoloSource


class PrepareParams(Strict):
    source: Literal["synthetic", "coco", "voc", "yolo", "folders"]
    seed: int = Field(ge=0)
    synthetic: SyntheticParams
    external: ExternalParams


class CropParams(Strict):
    padding: float = Field(ge=0, le=0.5, description="context added around each box, as a fraction of its size")
    min_box_size: int = Field(ge=1, description="boxes smaller than this (px) are counted and not cropped")
    detector: Name = Field(description="test crops from this detector cell's boxes; best = highest val mAP; none = ground truth")
    score_threshold: float | Literal["auto"] = Field(description="detections below it are not cropped; auto = the best F1 of matched val detections")
    max_detections: int = Field(ge=1, description="per image, highest scores first")
    match_iou: float = Field(gt=0, le=1, description="a detection takes the class of a ground-truth box it overlaps this much")
    stored_size: int = Field(ge=16, le=1024, description="side (px) of the stored square crops; at least every recognizer image_size")
    workers: int = Field(ge=0, le=256, description="processes cutting crops; 0 = one per CPU core")

    @field_validator("score_threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            return value
        raise ValueError(f"must be auto or a number in [0, 1], got {value!r}")


BACKBONE_DEPTHS = (18, 34, 50, 101)


class DetectorConfig(Strict):
    """One detector training configuration: base merged with a variant's overrides."""

    config: str = Field(description="an mmdet config file (configs/detectors/*.py)")
    class_aware: bool = Field(description="false: one 'product' class; true: every SKU class")
    backbone_depth: Literal[BACKBONE_DEPTHS]
    pretrained: str = Field(description="none | download (ImageNet weights; needs network) | path to a checkpoint")
    input_size: tuple[Annotated[int, Field(ge=32, le=4096)], Annotated[int, Field(ge=32, le=4096)]]
    fpn_channels: int = Field(ge=8, le=1024)
    max_per_img: int = Field(ge=1, le=10000, description="test-time detections per image (val, test, serving); dense shelves hold 150+")
    rpn_nms_pre: int = Field(ge=1)
    rpn_max_per_img: int = Field(ge=1, description="training proposals per image; at test time at least max_per_img")
    rcnn_sampler_num: int = Field(ge=1)
    fc_out_channels: int = Field(ge=8, le=4096)
    roi_align: Literal["torchvision", "mmcv"]
    optimizer: Literal["sgd", "adamw"]
    lr: float = Field(gt=0, le=10)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0, le=1)
    grad_clip: float = Field(ge=0, description="max gradient norm; 0 = off")
    warmup_iters: int = Field(ge=0)
    warmup_factor: float = Field(gt=0, le=1)
    milestones: list[int]
    gamma: float = Field(gt=0, le=1)
    epochs: int = Field(ge=1, le=10000)
    batch_size: int = Field(ge=1, le=1024)
    num_workers: int = Field(ge=0, le=64)
    seed: int = Field(ge=0)
    world_size: int = Field(ge=1, le=64, description="processes per cell (mmengine launcher 'pytorch' under torchrun); 1 = one plain process")

    @field_validator("config")
    @classmethod
    def _config_exists(cls, value: str, info: ValidationInfo) -> str:
        if not _is_params_file(value, info):
            raise ValueError(f"config file '{value}' not found")
        return value

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, value: str, info: ValidationInfo) -> str:
        if value not in ("none", "download") and not _is_params_file(value, info):
            raise ValueError(f"must be none, download or an existing checkpoint file; '{value}' not found")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.milestones != sorted(self.milestones) or any(not 0 < m < self.epochs for m in self.milestones):
            raise ValueError(f"milestones {self.milestones} must be increasing epochs between 0 and epochs ({self.epochs})")
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size ({self.batch_size}) is the global batch and must be a multiple of world_size ({self.world_size})")
        return self


def unread_keys(override: dict, config: BaseModel, used_axes: list[tuple[str, dict, list[str], str]]) -> list[str]:
    """'key: message' for each key of `override` that the entries `config` uses do not read (while another entry does).

    used_axes: (axis, its table of skulab.axes records, the entries config uses, the key that chooses them).
    """
    used, ignored = set(), {}
    for _, table, names, _ in used_axes:
        for entry in (table[name] for name in names):
            skipped = entry.ignores(config)
            used |= entry.reads - set(skipped)
            ignored.update(skipped)
    errors = []
    for key in override:
        for axis, table, names, chooser in used_axes:
            readers = [name for name, entry in table.items() if key in entry.reads]
            if not readers or key in used:
                continue
            chosen = f"{axis} {', '.join(repr(name) for name in names)}"
            why = f"when {ignored[key]}" if key in ignored else f"(read by {', '.join(readers)})"
            errors.append(f"{key}: not read by {chosen} {why}; remove it or change {chooser}")
            break
    return errors


class GridParams(Strict):
    """A base configuration and named variants that override some of its keys (one DVC cell each)."""

    base: dict[str, Any]
    variants: dict[Name, dict[str, Any] | None] = Field(min_length=1)
    config_schema: ClassVar[type[BaseModel]]  # what base + one variant must make
    variant_keys: ClassVar[tuple[str, ...]] = ()  # keys each variant sets itself (dvc.yaml interpolates them)

    def resolve(self, variant: str) -> BaseModel:
        """The base merged with one variant's overrides (already validated by load_params)."""
        return self.config_schema.model_validate({**self.base, **(self.variants[variant] or {})})

    def variant_errors(self, override: dict, config: BaseModel) -> list[str]:
        """Errors of one schema-valid variant beyond its schema, each 'key: message'."""
        return []

    def canonical(self, config: BaseModel) -> dict:
        """What makes two resolved configurations the same cell."""
        return config.model_dump(mode="json")


CROP_DETECTOR_CHOICES = ("best", "none")  # crop.detector values besides a variant name


class DetectorParams(GridParams):
    """No variants ({}) is a recognition-only study: no detector cells, crops from ground-truth boxes."""

    variants: dict[Name, dict[str, Any] | None] = Field(min_length=0)
    config_schema: ClassVar[type[BaseModel]] = DetectorConfig
    variant_keys: ClassVar[tuple[str, ...]] = ("config",)

    def variant_errors(self, override: dict, config: DetectorConfig) -> list[str]:
        """A key only another kind of detector reads (rpn_*, rcnn_*, fc_out_channels, roi_align: two-stage) is refused."""
        entry = axes.detector_for_config(config.config)
        if entry is None:  # a config file no record in skulab/axes.py describes: its kind is unknown
            return []
        return unread_keys(override, config, [(f"{entry.kind} detector", axes.DETECTORS, [entry.name], "config")])

    @field_validator("variants")
    @classmethod
    def _not_reserved(cls, variants: dict) -> dict:
        for name in variants:
            if name in CROP_DETECTOR_CHOICES:
                raise ValueError(f"'{name}' is reserved (crop.detector: {' | '.join(CROP_DETECTOR_CHOICES)}); rename the variant")
        return variants


class RecognizerConfig(Strict):
    """One recognizer training configuration: base merged with a variant's overrides."""

    backbone: Annotated[str, AfterValidator(_choice("backbone", axes.BACKBONES))]
    pretrained: str = Field(description="none | imagenet | path to a local state dict")
    head: Annotated[str, AfterValidator(_choice("head", axes.HEADS))]
    embedding_dim: int = Field(ge=8, le=4096)
    image_size: int = Field(ge=32, le=512)
    crop_pct: float = Field(gt=0.5, le=1, description="eval: resize to image_size / crop_pct, centre-crop image_size (timm: 0.875); 1 = resize only")
    optimizer: Annotated[str, AfterValidator(_choice("optimizer", axes.OPTIMIZERS))]
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=1)
    betas: tuple[Beta, Beta]
    decay_norm_and_bias: bool = Field(description="false: 1-D parameters (norms, biases, the BNNeck) get no weight decay")
    momentum: float = Field(ge=0, lt=1)
    lookahead_k: int = Field(ge=1)
    lookahead_alpha: float = Field(gt=0, le=1)
    loss: dict[str, float] = Field(min_length=1)
    label_smoothing: float = Field(ge=0, lt=1)
    triplet_margin: float = Field(ge=0)
    triplet_soft_margin: bool
    ms_alpha: float = Field(gt=0)
    ms_beta: float = Field(gt=0)
    ms_base: float = Field(ge=0, le=1)
    ms_miner_epsilon: float = Field(ge=0)
    sampler_k: int = Field(ge=2, description="instances per class in a PK batch when a metric loss is on")
    schedule: Annotated[str, AfterValidator(_choice("schedule", axes.SCHEDULES))]
    warmup_epochs: float = Field(ge=0)
    warmup_method: Literal["linear", "constant"]
    warmup_factor: float = Field(gt=0, le=1)
    milestones: list[float]
    gamma: float = Field(gt=0, le=1)
    end_lr_factor: Fraction
    augment: Annotated[str, AfterValidator(_choice("augmentation", axes.AUGMENTATIONS))]
    epochs: int = Field(ge=1, le=10000)
    batch_size: int = Field(ge=2, le=4096)
    device: Literal["cpu", "cuda", "auto"] = Field(description="auto = cuda when available")
    world_size: int = Field(ge=1, le=64, description="processes per cell (DDP under torchrun); 1 = one plain process")

    @field_validator("loss")
    @classmethod
    def _loss(cls, loss: dict[str, float]) -> dict[str, float]:
        for name, weight in loss.items():
            _choice("loss", axes.LOSSES)(name)
            if weight < 0:
                raise ValueError(f"weight of '{name}' must be >= 0, got {weight}")
        if not any(w > 0 for w in loss.values()):
            raise ValueError("at least one loss needs a weight > 0")
        return loss

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, value: str, info: ValidationInfo) -> str:
        if value not in ("none", "imagenet") and not _is_params_file(value, info):
            raise ValueError(f"must be none, imagenet or an existing weights file; '{value}' not found")
        return value

    def axes(self) -> list[tuple[str, dict, list[str]]]:
        """(axis, its table of records, the entries this configuration uses) for each recognizer axis."""
        return [
            ("optimizer", axes.OPTIMIZERS, [self.optimizer]),
            ("loss", axes.LOSSES, active_losses(self.loss)),
            ("schedule", axes.SCHEDULES, [self.schedule]),
            ("augment", axes.AUGMENTATIONS, [self.augment]),
            ("backbone", axes.BACKBONES, [self.backbone]),
            ("head", axes.HEADS, [self.head]),
        ]

    @model_validator(mode="after")
    def _consistent(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if "milestones" in axes.SCHEDULES[self.schedule].reads and (
            self.milestones != sorted(self.milestones) or any(not self.warmup_epochs < m < self.epochs for m in self.milestones)
        ):
            raise ValueError(
                f"milestones {self.milestones} must be increasing and between warmup_epochs and epochs"
            )
        if uses_metric_loss(self.loss) and self.batch_size % self.sampler_k:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of sampler_k ({self.sampler_k}) "
                "for the PK sampler a metric loss needs"
            )
        if uses_metric_loss(self.loss) and self.batch_size // self.sampler_k < 2:
            raise ValueError(
                f"a PK batch of batch_size ({self.batch_size}) / sampler_k ({self.sampler_k}) = 1 class has no negatives; "
                "a metric loss needs P >= 2 classes per batch"
            )
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size ({self.batch_size}) is the global batch and must be a multiple of world_size ({self.world_size})")
        if uses_metric_loss(self.loss) and self.world_size > 1:
            p = self.batch_size // self.sampler_k
            if p % self.world_size or p // self.world_size < 2:
                raise ValueError(
                    f"PK batches on world_size ({self.world_size}) processes: P = batch_size ({self.batch_size}) / sampler_k "
                    f"({self.sampler_k}) = {p} classes must split into at least 2 classes per process"
                )
        return self


class RecognizerParams(GridParams):
    config_schema: ClassVar[type[BaseModel]] = RecognizerConfig
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        return seeds

    def variant_errors(self, override: dict, config: RecognizerConfig) -> list[str]:
        """A key a variant sets must be read by the method it uses; each axis table's records say which keys they read."""
        return unread_keys(override, config, [(axis, table, names, axis) for axis, table, names in config.axes()])

    def canonical(self, config: RecognizerConfig) -> dict:
        dump = config.model_dump(mode="json")
        return {**dump, "loss": {name: w for name, w in dump["loss"].items() if w > 0}}


RANK_METRICS = ("val_proto_acc", "val_precision_at_1", "val_map_at_r")  # validation metrics every head has


class EvaluateParams(Strict):
    rank_by: str = Field(description="the validation metric that ranks variants and picks the best (never a test metric)")
    baseline: Name = Field(description="the recognizer variant every other variant is compared with, seed by seed")

    @field_validator("rank_by")
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        """Selecting on test would make the reported test numbers optimistic; every head must have the metric."""
        if value not in RANK_METRICS:
            hint = "; test metrics are reported beside it, never used to select" if value.startswith("test_") else ""
            raise ValueError(f"must be a validation metric every head has: {', '.join(RANK_METRICS)} (got '{value}'){hint}")
        return value


PACKAGE_DETECTOR_CHOICES = ("best", "none")  # package.detector values besides a variant name


class PackageParams(Strict):
    """The `package` stage: the winning detector and recognizer as one registered MLflow model."""

    detector: Name = Field(description="best (highest val mAP) | none (recognizer only) | a detector.variants key")
    recognizer: str = Field(pattern=r"^(best|[A-Za-z0-9_]+-[0-9]+)$", description="best (metrics/summary.json) | <variant>-<seed>")
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=256, description="registered model name")
    alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=255, description="registry alias moved to each new version")
    reject: float = Field(ge=0, lt=0.5, description="share of val products below the nearest-prototype reject threshold; 0 = never unknown")
    top_k: int = Field(ge=1, le=100, description="alternatives listed per product")
    batch_size: int = Field(ge=1, le=4096, description="crops per recognizer forward pass")

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        """MLflow reserves 'latest' and version-like aliases (v1, V2, ...)."""
        if value.lower() == "latest" or re.fullmatch(r"[vV][0-9]+", value):
            raise ValueError(f"'{value}' is reserved by the MLflow registry (latest, v<number>); choose another alias")
        return value


class Params(Strict):
    mlflow: MlflowParams
    prepare: PrepareParams
    detector: DetectorParams
    crop: CropParams
    recognizer: RecognizerParams
    evaluate: EvaluateParams
    package: PackageParams


def _format_error(err: dict, prefix: tuple = ()) -> str:
    loc = ".".join(str(part) for part in (*prefix, *err["loc"]))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "missing key"
    elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    return f"{loc}: {msg}" if loc else msg


def _raise(source: str, errors: list[str]):
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise SkulabError(f"{source}: {errors[0]}{more}")


def _validate_variants(section: str, grid: GridParams, source: str, context: dict) -> None:
    schema = grid.config_schema
    errors = []
    own = set(grid.variant_keys)
    base_keys = own & set(grid.base)
    if base_keys:
        _raise(source, [f"{section}.base.{sorted(base_keys)[0]}: set it in each variant, not in base"])
    try:
        schema.model_validate({**{key: None for key in own}, **grid.base}, context=context)
    except ValidationError as exc:
        errors += [_format_error(e, (section, "base")) for e in exc.errors() if not e["loc"] or e["loc"][0] not in own]
    if errors:
        _raise(source, errors)
    resolved = {}
    for name, override in grid.variants.items():
        override = override or {}
        try:
            resolved[name] = schema.model_validate({**grid.base, **override}, context=context)
            errors += [f"{section}.variants.{name}.{error}" for error in grid.variant_errors(override, resolved[name])]
        except ValidationError as exc:
            for e in exc.errors():
                # Blame the variant when it set the key, added an unknown one or lacks its own key; else the base.
                key = e["loc"][0] if e["loc"] else None
                blame_variant = key in override or key in own or not e["loc"]
                errors.append(_format_error(e, (section, "variants", name) if blame_variant else (section, "base")))
    if errors:
        _raise(source, errors)
    seen = {}
    for name, config in resolved.items():  # two names for one cell would train it twice and rank it twice
        key = json.dumps(grid.canonical(config), sort_keys=True)
        if key in seen:
            errors.append(f"{section}.variants.{name}: resolves to the same configuration as variant '{seen[key]}'")
        seen.setdefault(key, name)
    if errors:
        _raise(source, errors)


def _check_crop_detector(crop: CropParams, detector: DetectorParams, path: Path) -> None:
    allowed = (*CROP_DETECTOR_CHOICES, *detector.variants)
    if crop.detector not in allowed:
        _raise(path, [f"crop.detector: unknown detector '{crop.detector}'; allowed: {', '.join(allowed)}"])


def _check_stored_size(crop: CropParams, recognizer: RecognizerParams, path: Path) -> None:
    """Crops are stored once at crop.stored_size; a recognizer reading them larger would train on upsampled pixels."""
    for name in recognizer.variants:
        size = recognizer.resolve(name).image_size
        if size > crop.stored_size:
            _raise(path, [f"crop.stored_size: {crop.stored_size} is smaller than recognizer variant '{name}' image_size {size}; "
                          f"set it to at least {size} (round(image_size x {axes.BASIC_RESIZE:g}) = {axes.basic_resize(size)} leaves room for the random crop)"])


def _check_baseline(evaluate: EvaluateParams, recognizer: RecognizerParams, path: Path) -> None:
    """Caught before the grid trains, not when evaluate finally needs it."""
    if evaluate.baseline not in recognizer.variants:
        _raise(path, [f"evaluate.baseline: '{evaluate.baseline}' is not a recognizer variant; allowed: {', '.join(recognizer.variants)}"])


def _check_package(package: PackageParams, values: dict, path: Path) -> None:
    """package.detector names a detector; package.recognizer a cell of the grid (when those sections are loaded)."""
    if "detector" in values:
        allowed = (*PACKAGE_DETECTOR_CHOICES, *values["detector"].variants)
        if package.detector not in allowed:
            _raise(path, [f"package.detector: unknown detector '{package.detector}'; allowed: {', '.join(allowed)}"])
    if "recognizer" in values and package.recognizer != "best":
        variant, seed = package.recognizer.rsplit("-", 1)
        recognizer = values["recognizer"]
        if variant not in recognizer.variants:
            _raise(path, [f"package.recognizer: unknown variant '{variant}'; allowed: best or <variant>-<seed> with variant in {', '.join(recognizer.variants)}"])
        if int(seed) not in recognizer.seeds:
            _raise(path, [f"package.recognizer: seed {seed} is not in recognizer.seeds {recognizer.seeds}"])


def read_params_file(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SkulabError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SkulabError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SkulabError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_params(path: str | Path = PARAMS_FILE, sections: tuple[str, ...] | None = None) -> Params:
    """Validate params.yaml (or only `sections` of it, as a stage does) and return it typed.

    Sections not asked for are left unvalidated and absent from the result.
    """
    path = Path(path)
    data = read_params_file(path)
    fields = Params.model_fields
    unknown = [key for key in data if key not in fields]
    if unknown:
        _raise(path, [f"{unknown[0]}: unknown section; allowed: {', '.join(fields)}"])
    wanted = sections or tuple(fields)
    context = {"root": path.parent}
    errors, values = [], {}
    for name in wanted:
        if name not in data:
            errors.append(f"{name}: missing section")
            continue
        try:
            values[name] = fields[name].annotation.model_validate(data[name], context=context)
        except ValidationError as exc:
            errors += [_format_error(e, (name,)) for e in exc.errors()]
    if errors:
        _raise(path, errors)
    for section, value in values.items():
        if isinstance(value, GridParams):
            _validate_variants(section, value, str(path), context)
    if "crop" in values and "detector" in values:
        _check_crop_detector(values["crop"], values["detector"], path)
    if "crop" in values and "recognizer" in values:
        _check_stored_size(values["crop"], values["recognizer"], path)
    if "package" in values:
        _check_package(values["package"], values, path)
    if "evaluate" in values and "recognizer" in values:
        _check_baseline(values["evaluate"], values["recognizer"], path)
    return Params.model_construct(**values)
