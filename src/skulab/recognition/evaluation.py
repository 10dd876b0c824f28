"""Per-cell evaluation: top-1, nearest-prototype accuracy, and retrieval (precision@1, mAP@R).

The gallery is the train split (the known products); queries are val or test crops. Metric-only
heads have no trained classifier, so their accuracy is the nearest-prototype one, and they are
scored on the embedding their loss trained (before the BNNeck).
"""

import warnings

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.metrics import balanced_accuracy_score


@torch.no_grad()
def embed(model, images: torch.Tensor, transform, after_bnneck: bool, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieval features and logits (on the CPU) for uint8 images, in eval mode.

    After the BNNeck when a classification loss trained it; before it for metric-only heads,
    whose BN layer no loss trains (its per-dimension rescaling measured 0.28 vs 0.86
    nearest-prototype accuracy for a triplet-only head on the default data).
    """
    model.eval()
    device = next(model.parameters()).device
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        out = model(transform(images[start : start + batch_size]).to(device))
        features.append((out.feature if after_bnneck else out.embedding).cpu())
        logits.append(out.logits.cpu())
    return torch.cat(features), torch.cat(logits)


def prototype_similarities(gallery: torch.Tensor, gallery_labels: torch.Tensor, queries: torch.Tensor, num_classes: int):
    """Cosine similarity of each query to each class-mean of the gallery embeddings (queries x classes)."""
    gallery = F.normalize(gallery, dim=1)
    prototypes = torch.zeros(num_classes, gallery.shape[1]).index_add_(0, gallery_labels, gallery)
    prototypes = F.normalize(prototypes, dim=1)
    return F.normalize(queries, dim=1) @ prototypes.T


def prototype_predictions(gallery: torch.Tensor, gallery_labels: torch.Tensor, queries: torch.Tensor, num_classes: int):
    """Class of the nearest class-mean (cosine) of the gallery embeddings."""
    return prototype_similarities(gallery, gallery_labels, queries, num_classes).argmax(dim=1)


def predict(gallery, gallery_labels, queries, query_logits, num_classes: int, has_classifier: bool) -> dict[str, torch.Tensor]:
    """Per query: the head's answer and its confidence, and the nearest prototype with its similarity.

    The head's answer is the classifier's arg-max (confidence: its softmax probability) or, for
    metric-only heads, the nearest prototype (confidence: (1 + cosine) / 2, so it lies in [0, 1]).
    """
    similarity, proto_pred = prototype_similarities(gallery, gallery_labels, queries, num_classes).max(dim=1)
    if has_classifier:
        confidence, pred = query_logits.softmax(dim=1).max(dim=1)
    else:
        confidence, pred = (1 + similarity) / 2, proto_pred
    return {"pred": pred, "confidence": confidence, "proto_pred": proto_pred, "proto_similarity": similarity}


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of the per-class recalls over the classes present in `labels` (macro accuracy)."""
    with warnings.catch_warnings():  # a predicted class absent from `labels` is not an error here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(labels.numpy(), predictions.numpy()))


_retrieval = AccuracyCalculator(
    include=("precision_at_1", "mean_average_precision_at_r"),
    k="max_bin_count",
    knn_func=CustomKNN(CosineSimilarity()),
)


def score(gallery, gallery_labels, queries, query_logits, query_labels, num_classes: int, has_classifier: bool) -> dict:
    retrieval = _retrieval.get_accuracy(queries, query_labels, gallery, gallery_labels, ref_includes_query=False)
    proto = prototype_predictions(gallery, gallery_labels, queries, num_classes)
    metrics = {
        "proto_acc": (proto == query_labels).float().mean().item(),
        "precision_at_1": float(retrieval["precision_at_1"]),
        "map_at_r": float(retrieval["mean_average_precision_at_r"]),
    }
    if has_classifier:
        metrics["top1"] = (query_logits.argmax(dim=1) == query_labels).float().mean().item()
    answers = query_logits.argmax(dim=1) if has_classifier else proto
    metrics["balanced_acc"] = balanced_accuracy(answers, query_labels)
    return metrics


def end_to_end(predictions: torch.Tensor, labels: torch.Tensor, crops: int, gt_boxes: int) -> dict:
    """Detection and recognition together: products named right, over the ground-truth boxes (recall)
    and over every test crop (precision), where background crops and missed boxes count as wrong.

    `predictions` and `labels` cover the crops that show a product; the recognizer has no
    background class, so every background crop is a wrong answer.
    """
    correct = int((predictions == labels).sum()) if len(labels) else 0
    return {"e2e_recall": correct / gt_boxes if gt_boxes else 0.0, "e2e_precision": correct / crops if crops else 0.0}


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    result = {}
    for index, name in enumerate(class_names):
        mask = labels == index
        if mask.any():
            result[name] = (predictions[mask] == index).float().mean().item()
    return result
