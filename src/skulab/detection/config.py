"""From params to an mmdet config: our dataset, classes, schedule and head sizes over a shipped config.

The architecture comes from the config file in configs/detectors/ (which inherits mmdet's own
through `_base_`); this module only fills in what params.yaml owns. Knobs that a detector does not
have (an RPN in a one-stage detector, say) are left alone.
"""

from pathlib import Path

import torch
from mmengine.config import Config, ConfigDict

from skulab.detection import SELECT_METRIC, mmdet_metric_key
from skulab.detection.compat import patch_mmengine
from skulab.detection.pretrained import check_backbone_weights
from skulab.errors import SkulabError
from skulab.params import DetectorConfig

RESNET_WIDTHS = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048], 101: [256, 512, 1024, 2048]}
METRIC_ITEMS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR@100")


def load_config(path: Path) -> Config:
    patch_mmengine()
    if not path.is_file():
        raise SkulabError(f"{path}: detector config file not found")
    try:
        return Config.fromfile(str(path))
    except (SyntaxError, FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        raise SkulabError(f"{path}: cannot read the mmdet config ({type(exc).__name__}: {exc})") from None


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _backbone(model: ConfigDict, config: DetectorConfig, repo: Path) -> None:
    backbone = model.backbone
    if backbone.get("type") != "ResNet":
        raise SkulabError(f"{config.config}: backbone_depth needs a ResNet backbone, found {backbone.get('type')}")
    backbone.depth = config.backbone_depth
    model.neck.in_channels = RESNET_WIDTHS[config.backbone_depth]
    if config.pretrained == "none":
        # From scratch: nothing to freeze, and batch statistics must be learned.
        backbone.init_cfg = None
        backbone.frozen_stages = -1
        backbone.norm_eval = False
        backbone.norm_cfg = dict(type="BN", requires_grad=True)
    elif config.pretrained == "download":
        backbone.init_cfg = dict(type="Pretrained", checkpoint=f"torchvision://resnet{config.backbone_depth}")
    else:  # a local file, checked now: mmengine would load a file that does not fit partly, with a log line
        checkpoint = (repo / config.pretrained).resolve()
        check_backbone_weights(checkpoint, backbone.to_dict())
        backbone.init_cfg = dict(type="Pretrained", checkpoint=str(checkpoint))


def _heads(model: ConfigDict) -> list[ConfigDict]:
    """The box heads reading the FPN: dense heads, or the RPN and every R-CNN stage."""
    heads = [model[key] for key in ("bbox_head", "rpn_head") if key in model]
    if "roi_head" in model:
        heads += _as_list(model.roi_head.bbox_head)
    return heads


def _widths(model: ConfigDict, config: DetectorConfig) -> None:
    model.neck.out_channels = config.fpn_channels
    for key in ("bbox_head", "rpn_head"):
        if key in model:
            model[key].in_channels = config.fpn_channels
            if "feat_channels" in model[key]:
                model[key].feat_channels = config.fpn_channels
    if "roi_head" in model:
        roi = model.roi_head
        roi.bbox_roi_extractor.out_channels = config.fpn_channels
        roi.bbox_roi_extractor.roi_layer.use_torchvision = config.roi_align == "torchvision"
        for head in _as_list(roi.bbox_head):
            head.in_channels = config.fpn_channels
            head.fc_out_channels = config.fc_out_channels


def _proposals(model: ConfigDict, config: DetectorConfig) -> None:
    if "rpn_head" not in model:
        return
    for stage in (model.train_cfg.rpn_proposal, model.test_cfg.rpn):
        stage.nms_pre = config.rpn_nms_pre
        stage.max_per_img = config.rpn_max_per_img
    for stage in _as_list(model.train_cfg.rcnn):
        stage.sampler.num = config.rcnn_sampler_num


def _test_output(cfg: Config, config: DetectorConfig) -> None:
    """At most max_per_img detections per image at test time (val, test, serving), and nothing capping below it.

    The R-CNN stage can only keep as many boxes as the RPN proposes, so test-time proposals are raised
    to max_per_img when rpn_max_per_img is lower; training reads train_cfg.rpn_proposal, not this.
    """
    test_cfg = cfg.model.get("test_cfg")
    if not test_cfg:
        raise SkulabError(f"{config.config}: model.test_cfg not found; max_per_img needs an mmdet detector with a test_cfg")
    if "rcnn" in test_cfg:
        for stage in _as_list(test_cfg.rcnn):
            stage.max_per_img = config.max_per_img
    else:
        test_cfg.max_per_img = config.max_per_img
    if "rpn" in test_cfg:
        test_cfg.rpn.max_per_img = max(config.rpn_max_per_img, config.max_per_img)
    if "tta_model" in cfg and "tta_cfg" in cfg.tta_model:  # test-time augmentation's merge, if ever used
        cfg.tta_model.tta_cfg.max_per_img = config.max_per_img


def _num_classes(model: ConfigDict, num_classes: int) -> None:
    for head in _heads(model):
        if "num_classes" in head and head.get("type") != "RPNHead":
            head.num_classes = num_classes


def _pipelines(width: int, height: int) -> tuple[list, list]:
    train = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=(width, height), keep_ratio=True),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PackDetInputs"),
    ]
    test = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=(width, height), keep_ratio=True),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    return train, test


def _loader(config: DetectorConfig, prepared: Path, annotations: Path, classes: list[str], split: str, pipeline: list) -> dict:
    train = split == "train"
    dataset = dict(
        type="CocoDataset",
        data_root=str(prepared.resolve()),
        ann_file=str(annotations.resolve()),
        data_prefix=dict(img="images/"),
        metainfo=dict(classes=tuple(classes)),
        filter_cfg=dict(filter_empty_gt=train, min_size=1),
        test_mode=not train,
        pipeline=pipeline,
    )
    return dict(
        batch_size=config.batch_size if train else 1,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        sampler=dict(type="DefaultSampler", shuffle=train),
        drop_last=False,
        dataset=dataset,
    )


def _metric(annotations: Path, outfile_prefix: Path | None = None) -> dict:
    metric = dict(type="ZeroIfEmptyCocoMetric", ann_file=str(annotations.resolve()), metric="bbox", format_only=False, metric_items=list(METRIC_ITEMS))
    if outfile_prefix is not None:
        metric["outfile_prefix"] = str(outfile_prefix.resolve())
    return metric


def _schedule(cfg: Config, config: DetectorConfig) -> None:
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=config.epochs, val_interval=1)
    if config.optimizer == "sgd":
        optimizer = dict(type="SGD", lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = dict(type="AdamW", lr=config.lr, weight_decay=config.weight_decay)
    cfg.optim_wrapper.type = "OptimWrapper"
    cfg.optim_wrapper.optimizer = optimizer
    cfg.optim_wrapper.clip_grad = dict(max_norm=config.grad_clip, norm_type=2) if config.grad_clip else None
    schedulers = [dict(type="MultiStepLR", begin=0, end=config.epochs, by_epoch=True, milestones=config.milestones, gamma=config.gamma)]
    if config.warmup_iters:
        schedulers.insert(0, dict(type="LinearLR", start_factor=config.warmup_factor, by_epoch=False, begin=0, end=config.warmup_iters))
    cfg.param_scheduler = schedulers
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=config.batch_size)


def _launcher(cfg: Config, config: DetectorConfig) -> None:
    """world_size > 1: one cell on several processes started by torchrun (mmengine's launcher 'pytorch').

    batch_size stays the global batch: each process loads batch_size / world_size images per
    iteration (mmengine's DefaultSampler gives each its shard), so an epoch keeps its iterations.
    GPUs: nccl, one per process. CPU: gloo, and DDP without device ids (mmengine's default wrapper
    passes the local rank as a CUDA device). world_size 1 leaves the config as it was.
    """
    if config.world_size == 1:
        return
    cuda = torch.cuda.is_available()
    cfg.launcher = "pytorch"
    cfg.env_cfg.dist_cfg = dict(backend="nccl" if cuda else "gloo")
    cfg.train_dataloader.batch_size = config.batch_size // config.world_size
    if not cuda:
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False, find_unused_parameters=False)


def build_config(config: DetectorConfig, repo: Path, prepared: Path, annotations: dict[str, Path], classes: list[str], work_dir: Path, detections_prefix: Path) -> Config:
    """The full mmdet config of one detector cell, ready for mmengine's Runner (or tools/train.py)."""
    cfg = load_config(repo / config.config)
    if "model" not in cfg or "backbone" not in cfg.model or "neck" not in cfg.model:
        raise SkulabError(f"{config.config}: expected an mmdet detector config with model.backbone and model.neck")
    model = cfg.model
    _backbone(model, config, repo)
    _widths(model, config)
    _proposals(model, config)
    _test_output(cfg, config)
    _num_classes(model, len(classes))
    train_pipeline, test_pipeline = _pipelines(*config.input_size)
    cfg.train_dataloader = _loader(config, prepared, annotations["train"], classes, "train", train_pipeline)
    cfg.val_dataloader = _loader(config, prepared, annotations["val"], classes, "val", test_pipeline)
    cfg.test_dataloader = _loader(config, prepared, annotations["test"], classes, "test", test_pipeline)
    cfg.val_evaluator = _metric(annotations["val"])
    cfg.test_evaluator = _metric(annotations["test"], detections_prefix)
    cfg.custom_imports = dict(imports=["skulab.detection.metric"], allow_failed_imports=False)
    cfg.val_cfg = dict(type="ValLoop")
    cfg.test_cfg = dict(type="TestLoop")
    _schedule(cfg, config)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=5)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, max_keep_ckpts=1, save_best=mmdet_metric_key(SELECT_METRIC), rule="greater")
    # Local files only: no MLflowVisBackend (file store, whole config as params); the stage logs to MLflow itself.
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    cfg.randomness = dict(seed=config.seed, deterministic=False)
    cfg.env_cfg.cudnn_benchmark = False
    cfg.work_dir = str(work_dir.resolve())
    cfg.load_from = None
    cfg.resume = False
    _launcher(cfg, config)
    return cfg
