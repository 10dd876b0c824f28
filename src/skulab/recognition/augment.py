"""Train-time augmentation by name, from torchvision transforms v2, on uint8 CHW tensors.

Each augmentation is a function here (image_size -> transforms) plus its record in skulab/axes.py.
"""

import math

import torch
from torchvision.transforms import v2

from skulab import axes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _basic(size):
    pad = axes.basic_resize(size)  # round(size x BASIC_RESIZE)
    return [v2.Resize((pad, pad), antialias=True), v2.RandomCrop(size), v2.RandomHorizontalFlip()]


def none(size):
    return [v2.Resize((size, size), antialias=True)]


def basic(size):
    return _basic(size)


def autoaugment(size):
    return _basic(size) + [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]


def randaugment(size):
    return _basic(size) + [v2.RandAugment()]


def trivialaugment(size):
    return _basic(size) + [v2.TrivialAugmentWide()]


# timm's training default: timm.data.create_transform(size, is_training=True), i.e.
# transforms_imagenet_train with create_transform's interpolation (bilinear); timm's train.py
# passes --train-interpolation random (bilinear or bicubic per sample) instead.
TIMM_SCALE, TIMM_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
TIMM_HFLIP, TIMM_COLOR_JITTER = 0.5, 0.4


def timm(size):
    """timm's default train augmentation: RandomResizedCrop, horizontal flip, colour jitter 0.4.

    The jitter runs on float32 in [0, 1], not uint8: torchvision's uint8 contrast and saturation
    kernels floor a grayscale copy, and torch's floor opens an OpenMP parallel region even for one
    74 x 74 crop; on 2 cores shared with other jobs, OpenMP's default active wait made that 14 to
    44 ms per sample, against under 1.5 ms in float32 and for timm's PIL pipeline (bench/vs_timm.py).
    The float result differs from the uint8 one only by the uint8 kernels' rounding.
    """
    return [
        v2.RandomResizedCrop(size, scale=TIMM_SCALE, ratio=TIMM_RATIO, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(TIMM_HFLIP),
        v2.ToDtype(torch.float32, scale=True),
        v2.ColorJitter(brightness=TIMM_COLOR_JITTER, contrast=TIMM_COLOR_JITTER, saturation=TIMM_COLOR_JITTER),
    ]


AUGMENTS = {name: info.build for name, info in axes.full_table(
    "augmentations", axes.AUGMENTATIONS, axes.Built, none, basic, autoaugment, randaugment, trivialaugment, timm
).items()}  # name -> (image_size -> transforms)


def _normalize():
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def train_transform(name: str, size: int) -> v2.Compose:
    return v2.Compose(AUGMENTS[name](size) + _normalize())


def eval_transform(size: int, crop_pct: float = 1.0) -> v2.Compose:
    """Val, test and serving: resize to size (crop_pct 1), or as timm's eval transform, to
    floor(size / crop_pct) and the centre size x size (timm's default crop_pct is 0.875): training
    crops (basic's random crop, timm's RandomResizedCrop) show less than the whole stored crop."""
    if crop_pct == 1.0:
        return v2.Compose(none(size) + _normalize())
    scale = math.floor(size / crop_pct)
    return v2.Compose([v2.Resize((scale, scale), antialias=True), v2.CenterCrop(size), *_normalize()])
