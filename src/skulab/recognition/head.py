"""The recognizer: a timm backbone and one of two heads (`head` in params).

bnneck  embedding -> BNNeck -> classifier (the bag-of-tricks re-id head). Metric losses see the
        embedding before the BN; the classifier and retrieval use the one after it, so
        classification and metric losses can be combined without fighting over one feature
        space. (A metric-only head retrieves with the embedding before the BN: see evaluation.embed.)
linear  timm's own classifier: one linear layer (with bias) on the pooled backbone features, which
        are also the embedding and the retrieval feature. No embedding_dim. What timm's trainer
        builds; from scratch at a short budget it trains faster than bnneck (bench/vs_timm.py).
"""

from dataclasses import dataclass

import torch
from torch import nn

from skulab.axes import HEADS
from skulab.recognition.backbones import create_backbone

DEFAULT_HEAD = "bnneck"  # what a checkpoint or packaged model written before `head` existed used


@dataclass
class RecognizerOutput:
    embedding: torch.Tensor  # before BNNeck: for metric losses
    feature: torch.Tensor  # after BNNeck: for retrieval and prototypes
    logits: torch.Tensor


class Recognizer(nn.Module):
    def __init__(self, backbone: str, num_classes: int, embedding_dim: int, pretrained: str = "none", head: str = DEFAULT_HEAD):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head '{head}'; allowed: {', '.join(HEADS)}")
        self.head = head
        self.backbone = create_backbone(backbone, pretrained)
        # timm: pooled output width is head_hidden_size where a model has a conv head (MobileNetV3).
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        if head == "linear":
            self.classifier = nn.Linear(width, num_classes)
            return
        self.embed = nn.Linear(width, embedding_dim)
        self.bnneck = nn.BatchNorm1d(embedding_dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)

    def forward(self, images: torch.Tensor) -> RecognizerOutput:
        if self.head == "linear":
            pooled = self.backbone(images)
            return RecognizerOutput(pooled, pooled, self.classifier(pooled))
        embedding = self.embed(self.backbone(images))
        feature = self.bnneck(embedding)
        return RecognizerOutput(embedding, feature, self.classifier(feature))


def build_recognizer(config, num_classes: int, pretrained: str | None = None) -> Recognizer:
    """The recognizer a cell's config describes (a RecognizerConfig or its dumped dict, as checkpoints
    and packaged models store it); `pretrained` overrides the config's (serving loads trained weights)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return Recognizer(
        get("backbone"),
        num_classes,
        get("embedding_dim"),
        pretrained=get("pretrained", "none") if pretrained is None else pretrained,
        head=get("head", DEFAULT_HEAD),
    )
