"""Train-time augmentation by name, from torchvision transforms v2, on uint8 CHW tensors."""

import torch
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _basic(size):
    pad = round(size * 1.15)
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


AUGMENTS = {f.__name__: f for f in (none, basic, autoaugment, randaugment, trivialaugment)}


def _normalize():
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def train_transform(name: str, size: int) -> v2.Compose:
    return v2.Compose(AUGMENTS[name](size) + _normalize())


def eval_transform(size: int) -> v2.Compose:
    return v2.Compose(none(size) + _normalize())
