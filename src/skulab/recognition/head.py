"""Embedding -> BNNeck -> classifier (bag-of-tricks re-id head).

Metric losses see the embedding before the BN; the classifier and retrieval use the one after it,
so classification and metric losses can be combined without fighting over one feature space.
(A metric-only head retrieves with the embedding before the BN: see evaluation.embed.)
"""

from dataclasses import dataclass

import torch
from torch import nn

from skulab.recognition.backbones import create_backbone


@dataclass
class RecognizerOutput:
    embedding: torch.Tensor  # before BNNeck: for metric losses
    feature: torch.Tensor  # after BNNeck: for retrieval and prototypes
    logits: torch.Tensor


class Recognizer(nn.Module):
    def __init__(self, backbone: str, num_classes: int, embedding_dim: int, pretrained: str = "none"):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained)
        # timm: pooled output width is head_hidden_size where a model has a conv head (MobileNetV3).
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.embed = nn.Linear(width, embedding_dim)
        self.bnneck = nn.BatchNorm1d(embedding_dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)

    def forward(self, images: torch.Tensor) -> RecognizerOutput:
        embedding = self.embed(self.backbone(images))
        feature = self.bnneck(embedding)
        return RecognizerOutput(embedding, feature, self.classifier(feature))
