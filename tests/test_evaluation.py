"""Per-cell evaluation against numbers worked out by hand (issue 9 item 18).

Embeddings are 2-D unit directions given in degrees, so each nearest neighbour and each nearest
class mean can be read off the angles. Gallery (6 embeddings, 3 classes, 2 each):

    class 0 at -40 and 60 degrees -> prototype at 10 degrees
    class 1 at  90 and 110        -> prototype at 100
    class 2 at 180 and 200        -> prototype at 190

Queries (true class), nearest gallery items with their angular distance, nearest prototype:

    q0   5 (0): -40 c0 (45),  60 c0 (55)             P@1 1  AP@R (1 + 1) / 2 = 1    proto c0 (5)
    q1  70 (1):  60 c0 (10),  90 c1 (20)             P@1 0  AP@R (0 + 1/2) / 2 = 0.25  proto c1 (30 vs 60)
    q2 150 (2): 180 c2 (30), 110 c1 (40)             P@1 1  AP@R (1 + 0) / 2 = 0.5   proto c2 (40 vs 50)
    q3  58 (0):  60 c0 (2),   90 c1 (32)             P@1 1  AP@R (1 + 0) / 2 = 0.5   proto c1 (42 vs 48)

R is 2 (gallery items per class). The gallery norms differ on purpose: cosine ignores them.
"""

import math

import pytest
import torch

from skulab.recognition import evaluation

GALLERY_DEGREES = [-40, 60, 90, 110, 180, 200]
GALLERY_NORMS = [3.0, 1.0, 0.5, 2.0, 1.0, 4.0]
GALLERY_LABELS = [0, 0, 1, 1, 2, 2]
QUERY_DEGREES = [5, 70, 150, 58]
QUERY_LABELS = [0, 1, 2, 0]
# Classifier logits whose arg-max is [0, 2, 2, 1]: right on q0 and q2 only.
LOGITS = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0], [0.5, 1.5, 0.0]]


def _directions(degrees, norms=None):
    norms = norms or [1.0] * len(degrees)
    return torch.tensor([[n * math.cos(math.radians(d)), n * math.sin(math.radians(d))] for d, n in zip(degrees, norms)])


@pytest.fixture
def tiny():
    return {
        "gallery": _directions(GALLERY_DEGREES, GALLERY_NORMS),
        "gallery_labels": torch.tensor(GALLERY_LABELS),
        "queries": _directions(QUERY_DEGREES, [2.0, 1.0, 0.3, 1.0]),
        "query_logits": torch.tensor(LOGITS),
        "query_labels": torch.tensor(QUERY_LABELS),
    }


def test_prototype_predictions_are_the_nearest_class_means(tiny):
    predictions = evaluation.prototype_predictions(tiny["gallery"], tiny["gallery_labels"], tiny["queries"], num_classes=3)
    # q3 at 58 degrees sits next to a class-0 item (60) but nearer the class-1 mean (100) than the class-0 mean (10)
    assert predictions.tolist() == [0, 1, 2, 1]


def test_score_with_a_classifier(tiny):
    metrics = evaluation.score(**tiny, num_classes=3, has_classifier=True)
    assert metrics["proto_acc"] == pytest.approx(3 / 4)
    assert metrics["precision_at_1"] == pytest.approx(3 / 4)  # only q1's nearest item (60, class 0) is wrong
    assert metrics["map_at_r"] == pytest.approx((1 + 0.25 + 0.5 + 0.5) / 4)
    assert metrics["top1"] == pytest.approx(2 / 4)
    # the classifier's answers [0, 2, 2, 1]: recall 1/2 on class 0, 0 on class 1, 1 on class 2
    assert metrics["balanced_acc"] == pytest.approx((1 / 2 + 0 + 1) / 3)


def test_score_of_a_metric_only_head_has_no_top1(tiny):
    metrics = evaluation.score(**tiny, num_classes=3, has_classifier=False)
    assert "top1" not in metrics
    assert metrics["proto_acc"] == pytest.approx(3 / 4)
    # its answers are the prototypes [0, 1, 2, 1]: recall 1/2 on class 0, 1 on classes 1 and 2
    assert metrics["balanced_acc"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_per_class_accuracy_by_name_leaves_out_absent_classes():
    predictions, labels = torch.tensor([0, 2, 2, 1]), torch.tensor(QUERY_LABELS)
    result = evaluation.per_class_accuracy(predictions, labels, ["cola", "cola_zero", "fanta", "sprite"])
    assert result == pytest.approx({"cola": 0.5, "cola_zero": 0.0, "fanta": 1.0})  # no sprite among the queries
