"""Every ablation axis: backbones, head, optimizers, losses, schedules, augmentations, PK sampler."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from conftest import config
from skulab.errors import SkulabError
from skulab.recognition.augment import AUGMENTS, eval_transform, train_transform
from skulab.recognition.evaluation import embed
from skulab.recognition.backbones import BACKBONES, create_backbone
from skulab.recognition.head import Recognizer, RecognizerOutput
from skulab.recognition.losses import LOSSES, WeightedLoss
from skulab.recognition.optimizers import OPTIMIZERS, create_optimizer
from skulab.recognition.sampler import pk_sampler
from skulab.recognition.schedules import SCHEDULES, create_schedule


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_and_feeds_the_head(tiny_params, name):
    model = Recognizer(name, num_classes=5, embedding_dim=16).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.embedding.shape == out.feature.shape == (2, 16)
    assert out.logits.shape == (2, 5)


def test_pretrained_from_local_file(tmp_path):
    reference = create_backbone("mobilenetv3_small")
    path = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), path)
    loaded = create_backbone("mobilenetv3_small", str(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.save(create_backbone("resnet18").state_dict(), path)
    with pytest.raises(SkulabError, match="not a mobilenetv3_small_100 checkpoint"):
        create_backbone("mobilenetv3_small", str(path))


def test_bnneck_splits_metric_and_classifier_features():
    model = Recognizer("mobilenetv3_small", num_classes=3, embedding_dim=8).train()
    out = model(torch.rand(4, 3, 32, 32))
    assert not torch.allclose(out.embedding, out.feature)
    assert not model.bnneck.bias.requires_grad
    assert torch.allclose(out.logits, model.classifier(out.feature))


@pytest.mark.parametrize("after_bnneck", [True, False])
def test_retrieval_features_follow_the_head(after_bnneck):
    """Classifier heads retrieve after the BNNeck; metric-only heads with the embedding their loss trained."""
    model = Recognizer("mobilenetv3_small", num_classes=3, embedding_dim=8).eval()
    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    transform = eval_transform(32)
    features, logits = embed(model, images, transform, after_bnneck)
    with torch.no_grad():
        out = model(transform(images))
    assert torch.allclose(features, out.feature if after_bnneck else out.embedding)
    assert torch.allclose(logits, out.logits)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_lowers_a_toy_loss(tiny_params, name):
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 8), torch.randn(8, 1)
    y = x @ w_true
    layer = torch.nn.Linear(8, 1)
    cfg = config(tiny_params, optimizer=name, lr=0.05, weight_decay=0.0)
    optimizer = create_optimizer(layer.parameters(), cfg)
    first = F.mse_loss(layer(x), y).item()
    for _ in range(200):  # RAdam-based optimizers take a few steps to leave their warm-up
        loss = F.mse_loss(layer(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert F.mse_loss(layer(x), y).item() < 0.5 * first


def _pk_batch(p=4, k=4, dim=16, classes=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    embedding = torch.randn(p * k, dim, generator=generator, requires_grad=True)
    logits = torch.randn(p * k, classes, generator=generator, requires_grad=True)
    return RecognizerOutput(embedding, embedding, logits), labels


@pytest.mark.parametrize("loss", [{name: 1.0} for name in LOSSES] + [{"ce_label_smoothing": 1.0, "triplet": 0.5}])
def test_loss_is_finite_with_gradients(tiny_params, loss):
    out, labels = _pk_batch()
    total, parts = WeightedLoss(config(tiny_params, loss=loss))(out, labels)
    assert torch.isfinite(total) and total.item() > 0
    assert set(parts) == set(loss)
    total.backward()
    grad = out.embedding.grad if out.embedding.grad is not None else out.logits.grad
    assert grad is not None and grad.abs().sum() > 0


def test_weighted_sum_is_the_weighted_sum_of_terms(tiny_params):
    out, labels = _pk_batch()
    total, parts = WeightedLoss(config(tiny_params, loss={"ce": 0.3, "triplet": 2.0}))(out, labels)
    assert total.item() == pytest.approx(0.3 * parts["ce"] + 2.0 * parts["triplet"], rel=1e-6)


def test_label_smoothing_matches_formula(tiny_params):
    out, labels = _pk_batch()
    eps, n = 0.1, out.logits.shape[1]
    log_p = out.logits.log_softmax(dim=1)
    expected = -((1 - eps) * log_p.gather(1, labels[:, None]).squeeze(1) + eps / n * log_p.sum(dim=1)).mean()
    _, parts = WeightedLoss(config(tiny_params, loss={"ce_label_smoothing": 1.0}, label_smoothing=eps))(out, labels)
    assert parts["ce_label_smoothing"] == pytest.approx(expected.item(), rel=1e-5)


def _batch_hard_triplet_reference(embedding, labels, margin):
    """Batch-hard triplet by hand: L2-normalised, hardest positive and negative per anchor,
    averaged over the anchors with a non-zero loss (pytorch-metric-learning's reducer)."""
    x = F.normalize(embedding, dim=1)
    dist = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    hardest_pos = dist.masked_fill(~same | eye, -1).max(dim=1).values
    hardest_neg = dist.masked_fill(same, math.inf).min(dim=1).values
    losses = F.relu(hardest_pos - hardest_neg + margin)
    return losses[losses > 0].mean()


def _multi_similarity_reference(embedding, labels, alpha, beta, base, epsilon):
    """Multi-similarity loss with its pair miner, by hand (Wang et al. 2019)."""
    x = F.normalize(embedding, dim=1)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    total = []
    for i in range(len(labels)):
        pos, neg = sim[i][same[i] & ~eye[i]], sim[i][~same[i]]
        kept_neg = neg[neg + epsilon > pos.min()]
        kept_pos = pos[pos - epsilon < neg.max()]
        pos_term = torch.log1p(torch.exp(-alpha * (kept_pos - base)).sum()) / alpha
        neg_term = torch.log1p(torch.exp(beta * (kept_neg - base)).sum()) / beta
        total.append(pos_term + neg_term)
    return torch.stack(total).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_reference(tiny_params, seed):
    out, labels = _pk_batch(seed=seed)
    _, parts = WeightedLoss(config(tiny_params, loss={"triplet": 1.0}, triplet_margin=0.3))(out, labels)
    assert parts["triplet"] == pytest.approx(_batch_hard_triplet_reference(out.embedding, labels, 0.3).item(), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_similarity_matches_reference(tiny_params, seed):
    out, labels = _pk_batch(seed=seed)
    cfg = config(tiny_params, loss={"multi_similarity": 1.0})
    _, parts = WeightedLoss(cfg)(out, labels)
    expected = _multi_similarity_reference(out.embedding, labels, cfg.ms_alpha, cfg.ms_beta, cfg.ms_base, cfg.ms_miner_epsilon)
    assert parts["multi_similarity"] == pytest.approx(expected.item(), rel=1e-5)


def _closed_form_lr(cfg, t, ipe):
    base, warmup = cfg.lr, round(cfg.warmup_epochs * ipe)
    if cfg.schedule == "constant":
        return base
    if t < warmup:
        factor = cfg.warmup_factor + (1 - cfg.warmup_factor) * t / warmup if cfg.warmup_method == "linear" else cfg.warmup_factor
        return base * factor
    if cfg.schedule == "warmup_multistep":
        return base * cfg.gamma ** sum(round(m * ipe) <= t for m in cfg.milestones)
    end, total = base * cfg.end_lr_factor, cfg.epochs * ipe
    return end + (base - end) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2


SCHEDULE_CASES = [
    dict(schedule="constant"),
    dict(schedule="warmup_multistep", warmup_method="linear", warmup_epochs=1, milestones=[3, 5], epochs=6),
    dict(schedule="warmup_multistep", warmup_method="constant", warmup_epochs=0.5, milestones=[2.5], epochs=4),
    dict(schedule="warmup_multistep", warmup_epochs=0, milestones=[1, 2], epochs=3),
    dict(schedule="warmup_cosine", warmup_method="linear", warmup_epochs=1, epochs=6, milestones=[]),
    dict(schedule="warmup_cosine", warmup_method="constant", warmup_epochs=2, epochs=5, milestones=[], end_lr_factor=0.0),
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("optimizer", ["adam", "radam_lookahead", "ranger"])
def test_schedule_matches_closed_form_every_iteration(tiny_params, case, optimizer):
    cfg = config(tiny_params, optimizer=optimizer, **case)
    ipe = 7
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = create_optimizer(params, cfg)
    scheduler = create_schedule(opt, cfg, ipe)
    for t in range(cfg.epochs * ipe):
        assert opt.param_groups[0]["lr"] == pytest.approx(_closed_form_lr(cfg, t, ipe), rel=1e-9, abs=1e-15), f"iteration {t}"
        opt.step()
        scheduler.step()


def test_every_schedule_is_covered():
    assert {c["schedule"] for c in SCHEDULE_CASES} == set(SCHEDULES)


@pytest.mark.parametrize("name", AUGMENTS)
def test_augmentation_output(name):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 74, 74), dtype=torch.uint8)
    out = train_transform(name, 64)(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert eval_transform(64)(image).shape == (3, 64, 64)


def test_pk_sampler_guarantees_p_by_k():
    torch.manual_seed(0)
    labels = torch.arange(10).repeat_interleave(6)
    names = [f"c{i}" for i in range(10)]
    indices = list(pk_sampler(labels, names, batch_size=16, k=4))
    assert len(indices) == 48
    for start in range(0, len(indices), 16):
        counts = Counter(labels[indices[start : start + 16]].tolist())
        assert len(counts) == 4 and set(counts.values()) == {4}


def test_pk_sampler_refuses_short_classes_and_too_few_classes():
    labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 2)
    with pytest.raises(SkulabError, match="class 'c2' has 2 train crops, fewer than sampler_k=4"):
        pk_sampler(labels, ["c0", "c1", "c2"], batch_size=8, k=4)
    with pytest.raises(SkulabError, match="needs P=4 classes"):
        pk_sampler(labels, ["c0", "c1", "c2"], batch_size=16, k=4)
