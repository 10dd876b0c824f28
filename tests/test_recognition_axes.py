"""Every ablation axis: backbones, head, optimizers, losses, schedules, augmentations, PK sampler."""

import io
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from conftest import config
from skulab.errors import SkulabError
from skulab.recognition.augment import AUGMENTS, MEAN, STD, eval_transform, train_transform
from skulab.recognition.evaluation import embed
from skulab.recognition.backbones import BACKBONES, create_backbone
from skulab.recognition.head import Recognizer, RecognizerOutput
from skulab.recognition.losses import LOSSES, WeightedLoss
from skulab.recognition.optimizers import OPTIMIZERS, create_optimizer, param_groups
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


def test_linear_head_is_timms_classifier_on_the_pooled_features():
    """head: linear builds what timm.create_model(name, num_classes=C) builds: no embedding layer, no BNNeck."""
    import timm

    torch.manual_seed(0)
    model = Recognizer("mobilenetv3_small", num_classes=5, embedding_dim=16, head="linear").eval()
    images = torch.rand(2, 3, 32, 32)
    out = model(images)
    pooled = model.backbone(images)
    assert torch.equal(out.embedding, pooled) and torch.equal(out.feature, pooled)
    assert torch.allclose(out.logits, pooled @ model.classifier.weight.T + model.classifier.bias)
    assert not hasattr(model, "bnneck") and not hasattr(model, "embed")
    reference = timm.create_model("mobilenetv3_small_100", num_classes=5)
    assert model.classifier.weight.shape == reference.get_classifier().weight.shape and model.classifier.bias is not None
    own = sum(p.numel() for p in model.parameters())
    assert own == sum(p.numel() for p in reference.parameters())


def test_bnneck_head_is_the_default_and_builds_as_before():
    """A config or packaged settings without `head` (written before it existed) build the BNNeck head."""
    from skulab.recognition.head import build_recognizer

    torch.manual_seed(0)
    old = Recognizer("mobilenetv3_small", num_classes=3, embedding_dim=8)
    torch.manual_seed(0)
    new = build_recognizer({"backbone": "mobilenetv3_small", "embedding_dim": 8}, 3, pretrained="none")
    assert new.head == "bnneck"
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


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
    optimizer = create_optimizer(layer, cfg)
    first = F.mse_loss(layer(x), y).item()
    for _ in range(200):  # RAdam-based optimizers take a few steps to leave their warm-up
        loss = F.mse_loss(layer(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert F.mse_loss(layer(x), y).item() < 0.5 * first


def _quadratic_path(cfg, steps=5) -> list[torch.Tensor]:
    """p after each step on f(p) = sum(p^2) from p = [1, -2, 3]."""
    module = torch.nn.Module()
    module.p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = create_optimizer(module, cfg)
    path = [module.p.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        module.p.square().sum().backward()
        optimizer.step()
        path.append(module.p.detach().clone())
    return path


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_first_steps_go_downhill(tiny_params, name):
    """The first 5 steps are RAdam's un-adapted phase (rho_5 = 4.996 < 5): each must move every
    coordinate toward 0. pytorch_optimizer's Ranger with degenerated_to_sgd=False stepped uphill
    there ([1.2, -2.4, 3.6], ...). lookahead_k=6 keeps the 5 steps fast steps (the interpolation is
    tested below); sgd's momentum is 0.5 because Nesterov 0.9 overshoots this quadratic at lr 0.1."""
    cfg = config(tiny_params, optimizer=name, lr=0.1, weight_decay=0.0, momentum=0.5, lookahead_k=6)
    path = _quadratic_path(cfg)
    for step, (before, after) in enumerate(zip(path, path[1:]), 1):
        toward_zero = (after.abs() < before.abs()) & (after.sign() == before.sign())
        assert toward_zero.all(), f"step {step}: {before.tolist()} -> {after.tolist()}"
        assert after.square().sum() < before.square().sum()
    if name in ("radam", "radam_lookahead", "ranger"):  # the original Ranger's un-adapted step is torch's RAdam step
        reference = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        radam = torch.optim.RAdam([reference], lr=0.1, betas=cfg.betas)
        for step, expected in enumerate(path[1:], 1):
            radam.zero_grad()
            reference.square().sum().backward()
            radam.step()
            torch.testing.assert_close(expected, reference.detach(), msg=f"step {step}")
        torch.testing.assert_close(path[1], torch.tensor([0.8, -1.6, 2.4]))


def _net() -> torch.nn.Module:
    """Conv and linear weights (centralized by Ranger), their biases and a BN (not centralized, not decayed)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(36, 3)
    )


def _backward(net: torch.nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 2, 5, 5, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()


def _centralize(net: torch.nn.Module) -> None:
    """Gradient centralization by hand: each conv or linear weight's gradient minus its mean over all dims but 0."""
    for p in net.parameters():
        if p.grad is not None and p.dim() > 1:
            p.grad -= p.grad.mean(dim=tuple(range(1, p.dim())), keepdim=True)


def test_radam_lookahead_is_radam_until_k_then_interpolates(tiny_params):
    k, alpha = 3, 0.5
    cfg = config(tiny_params, optimizer="radam_lookahead", lr=0.01, weight_decay=0.01, lookahead_k=k, lookahead_alpha=alpha)
    net, ref = _net(), _net()
    lookahead = create_optimizer(net, cfg)
    radam = torch.optim.RAdam(param_groups(ref, cfg), lr=cfg.lr, betas=cfg.betas)  # torch's defaults: eps, L2 decay
    slow = [p.detach().clone() for p in ref.parameters()]
    for step in range(1, 3 * k + 2):
        _backward(net, step)
        lookahead.step()
        _backward(ref, step)
        radam.step()
        if step < k:
            assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters())), f"step {step}"
        if step % k == 0:  # Lookahead: slow + alpha * (fast - slow), and the fast weights restart from there
            with torch.no_grad():
                for p, s in zip(ref.parameters(), slow):
                    s.add_(p - s, alpha=alpha)
                    p.copy_(s)
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, msg=f"step {step}")


def test_ranger_is_radam_lookahead_on_centralized_gradients(tiny_params):
    """Same eps, same (L2) weight decay, same rectification: only gradient centralization differs."""
    same = dict(lr=0.01, weight_decay=0.01, lookahead_k=3)
    ranger_net, lookahead_net, plain_net = _net(), _net(), _net()
    ranger = create_optimizer(ranger_net, config(tiny_params, optimizer="ranger", **same))
    lookahead = create_optimizer(lookahead_net, config(tiny_params, optimizer="radam_lookahead", **same))
    plain = create_optimizer(plain_net, config(tiny_params, optimizer="radam_lookahead", **same))
    for step in range(1, 13):  # past Lookahead's k and RAdam's rectification (step 6)
        _backward(ranger_net, step)
        ranger.step()
        _backward(lookahead_net, step)
        _centralize(lookahead_net)
        lookahead.step()
        _backward(plain_net, step)
        plain.step()
        for (name, a), b in zip(ranger_net.named_parameters(), lookahead_net.parameters()):
            torch.testing.assert_close(a, b, msg=f"step {step}, {name}")
        if step == 1:  # biases and BN are left alone; weights are centralized
            conv, linear = ranger_net[0], ranger_net[4]
            assert torch.equal(conv.bias, plain_net[0].bias) and torch.equal(ranger_net[2].weight, plain_net[2].weight)
            assert not torch.allclose(conv.weight, plain_net[0].weight) and not torch.allclose(linear.weight, plain_net[4].weight)


def test_norms_and_biases_get_no_weight_decay_unless_asked(tiny_params):
    model = Recognizer("mobilenetv3_small", num_classes=3, embedding_dim=8)
    groups = create_optimizer(model, config(tiny_params, weight_decay=0.01)).param_groups
    decay = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert decay[id(p)] == (0.0 if p.ndim == 1 else 0.01), name
        else:  # the BNNeck's frozen bias
            assert id(p) not in decay, name
    assert decay[id(model.bnneck.weight)] == 0.0 and decay[id(model.embed.bias)] == 0.0
    everything = create_optimizer(model, config(tiny_params, weight_decay=0.01, decay_norm_and_bias=True)).param_groups
    assert [group["weight_decay"] for group in everything] == [0.01]
    assert len(everything[0]["params"]) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_applies_the_decay_groups(tiny_params, name):
    """With a zero loss gradient only weight decay moves a parameter: the weights move, 1-D parameters do not."""
    net = _net()
    optimizer = create_optimizer(net, config(tiny_params, optimizer=name, lr=0.01, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]) == (p.ndim == 1), n


def _train_steps(net, optimizer, scheduler, steps) -> None:
    for step in steps:
        _backward(net, step)
        optimizer.step()
        scheduler.step()


RESUME_CASES = [
    dict(schedule="constant"),
    dict(schedule="warmup_multistep", warmup_epochs=1, milestones=[2, 3], epochs=4),
    dict(schedule="warmup_cosine", warmup_epochs=1, epochs=4),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=lambda c: c["schedule"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_and_schedule_resume_bit_identical(tiny_params, name, case):
    """Stopped mid Lookahead cycle (7 % 3) and mid warm-up, saved through torch.save and resumed
    into fresh objects: the slow weights, moments, step counters and lr come back exactly."""
    cfg = config(tiny_params, optimizer=name, lr=0.01, lookahead_k=3, **case)
    ipe, stop = 8, 7
    total = cfg.epochs * ipe

    def build():
        net = _net()
        optimizer = create_optimizer(net, cfg)
        return net, optimizer, create_schedule(optimizer, cfg, ipe)

    full = build()
    _train_steps(*full, range(total))
    first = build()
    _train_steps(*first, range(stop))
    buffer = io.BytesIO()
    torch.save({"net": first[0].state_dict(), "optimizer": first[1].state_dict(), "scheduler": first[2].state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = build()
    for obj, key in zip(resumed, ("net", "optimizer", "scheduler")):
        obj.load_state_dict(saved[key])
    _train_steps(*resumed, range(stop, total))
    for (n, a), b in zip(full[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), n
    assert full[1].param_groups[0]["lr"] == resumed[1].param_groups[0]["lr"]


@pytest.mark.parametrize("name,slow_key", [("radam_lookahead", "slow_params"), ("ranger", "slow_buffer")])
def test_lookahead_slow_weights_round_trip_state_dict(tiny_params, name, slow_key):
    cfg = config(tiny_params, optimizer=name, lr=0.01, lookahead_k=3)
    net = _net()
    optimizer = create_optimizer(net, cfg)
    for step in range(4):  # one interpolation, then a fast step: slow != fast
        _backward(net, step)
        optimizer.step()
    slow = [optimizer.state[p][slow_key].clone() for p in net.parameters()]
    assert not all(torch.equal(s, p) for s, p in zip(slow, net.parameters()))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    other = _net()
    restored = create_optimizer(other, cfg)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    for s, p in zip(slow, other.parameters()):
        assert torch.equal(restored.state[p][slow_key], s)


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


def test_soft_margin_triplet_is_softplus_of_the_distance_gap(tiny_params):
    """Hermans et al. 2017: mean over anchors of log(1 + exp(d_ap - d_an)), hardest pair each, no margin.
    Unit vectors at 0 and 60 degrees (class 0), 180 and 90 (class 1); d = 2 sin(angle / 2)."""
    angles = torch.tensor([0.0, 60.0, 180.0, 90.0]) * math.pi / 180
    embedding = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    out = RecognizerOutput(embedding, embedding, torch.zeros(4, 2))
    s2, s3, d30 = math.sqrt(2), math.sqrt(3), 2 * math.sin(math.pi / 12)
    gaps = [1 - s2, 1 - d30, s2 - s3, s2 - d30]  # (hardest positive - hardest negative) for each anchor
    expected = sum(math.log1p(math.exp(g)) for g in gaps) / 4
    for margin in (0.2, 0.5):  # no margin inside the soft form
        cfg = config(tiny_params, loss={"triplet": 1.0}, triplet_soft_margin=True, triplet_margin=margin)
        _, parts = WeightedLoss(cfg)(out, labels)
        assert parts["triplet"] == pytest.approx(expected, rel=1e-5)
    hinge = WeightedLoss(config(tiny_params, loss={"triplet": 1.0}, triplet_margin=0.2))(out, labels)[1]["triplet"]
    active = [g + 0.2 for g in gaps if g + 0.2 > 0]
    assert hinge == pytest.approx(sum(active) / len(active), rel=1e-5)


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
    opt = create_optimizer(torch.nn.Linear(1, 1), cfg)
    scheduler = create_schedule(opt, cfg, ipe)
    for t in range(cfg.epochs * ipe):
        assert opt.param_groups[0]["lr"] == pytest.approx(_closed_form_lr(cfg, t, ipe), rel=1e-9, abs=1e-15), f"iteration {t}"
        opt.step()
        scheduler.step()


def test_every_schedule_is_covered():
    assert {c["schedule"] for c in SCHEDULE_CASES} == set(SCHEDULES)


@pytest.mark.parametrize("schedule", ["warmup_multistep", "warmup_cosine"])
def test_a_warmup_rounded_to_zero_iterations_stops_training(tiny_params, schedule):
    """0.05 epochs of 7 (or 10: half to even) iterations is no warm-up at all. Params alone cannot
    tell: the iterations per epoch come from the data, so the schedule builder refuses it."""
    cfg = config(tiny_params, schedule=schedule, warmup_epochs=0.05)
    opt = create_optimizer(torch.nn.Linear(1, 1), cfg)
    with pytest.raises(SkulabError, match=r"^recognizer: warmup_epochs 0.05 is 0 warm-up iterations at 7 iterations per epoch; set warmup_epochs to 0 or at least 0.143$"):
        create_schedule(opt, cfg, 7)
    with pytest.raises(SkulabError, match="0 warm-up iterations at 10 iterations per epoch"):
        create_schedule(opt, cfg, 10)
    create_schedule(opt, cfg, 20)  # one warm-up iteration


def test_milestones_rounded_onto_each_other_stop_training(tiny_params):
    cfg = config(tiny_params, schedule="warmup_multistep", warmup_epochs=1, milestones=[2.1, 2.2], epochs=3)
    opt = create_optimizer(torch.nn.Linear(1, 1), cfg)
    with pytest.raises(SkulabError, match=r"milestones \[2.1, 2.2\] are iterations \[4, 4\] at 2 iterations per epoch"):
        create_schedule(opt, cfg, 2)
    create_schedule(opt, cfg, 20)


@pytest.mark.parametrize("name", AUGMENTS)
def test_augmentation_output(name):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 74, 74), dtype=torch.uint8)
    out = train_transform(name, 64)(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert eval_transform(64)(image).shape == (3, 64, 64)


def _by_type(transforms, name: str):
    (found,) = [t for t in transforms if type(t).__name__ == name]
    return found


def test_timm_augmentation_is_timms_training_default(tiny_params):
    """Every parameter of timm.data.create_transform(64, is_training=True), and nothing else in it."""
    from timm.data import create_transform

    assert config(tiny_params, augment="timm").augment == "timm"  # params accept the new axis value

    reference = create_transform(64, is_training=True).transforms
    assert [type(t).__name__ for t in reference] == [
        "RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "ColorJitter", "MaybeToTensor", "Normalize"
    ]
    crop, flip, jitter, _, normalize = reference
    ours = train_transform("timm", 64).transforms
    our_crop = _by_type(ours, "RandomResizedCrop")
    assert tuple(our_crop.size) == crop.size == (64, 64)
    assert our_crop.scale == pytest.approx(crop.scale) and our_crop.ratio == pytest.approx(crop.ratio)
    assert our_crop.interpolation == crop.interpolation and our_crop.antialias
    assert _by_type(ours, "RandomHorizontalFlip").p == flip.p
    our_jitter = _by_type(ours, "ColorJitter")
    for factor in ("brightness", "contrast", "saturation", "hue"):
        assert getattr(our_jitter, factor) == (None if getattr(jitter, factor) is None else pytest.approx(getattr(jitter, factor))), factor
    our_normalize = _by_type(ours, "Normalize")
    assert our_normalize.mean == pytest.approx(normalize.mean.tolist()) and our_normalize.std == pytest.approx(normalize.std.tolist())


def test_timm_augmentation_jitters_in_float_like_uint8():
    """The jitter runs on float32 for speed (augment.timm); with the same random draws it gives
    torchvision's uint8 result up to that kernel's rounding (at most ~1/255 per step)."""
    from torchvision.transforms import v2

    ours = v2.Compose(AUGMENTS["timm"](64))
    uint8_jitter = v2.Compose([
        v2.RandomResizedCrop(64, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.ColorJitter(0.4, 0.4, 0.4),
        v2.ToDtype(torch.float32, scale=True),
    ])
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 74, 74), dtype=torch.uint8, generator=generator)
    changed = []
    for seed in range(8):
        torch.manual_seed(seed)
        out = ours(image)
        torch.manual_seed(seed)
        reference = uint8_jitter(image)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
        assert (out - reference).abs().max() <= 5 / 255, seed
        torch.manual_seed(seed)
        changed.append((out - v2.Compose(AUGMENTS["timm"](64)[:3])(image)).abs().mean().item())
    assert min(changed) > 0.01  # the jitter did act on every sample


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


def test_eval_transform_with_crop_pct_is_timms_resize_then_centre_crop():
    """crop_pct 0.875: resize to floor(64 / 0.875) = 73, keep the centre 64 (timm's eval); 1.0: resize to 64 only."""
    from torchvision.transforms import v2

    image = torch.randint(0, 256, (3, 74, 74), dtype=torch.uint8)
    resized = v2.Resize((73, 73), antialias=True)(image)
    top = int(round((73 - 64) / 2.0))  # torchvision's centre-crop offset
    expected = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(resized[:, top : top + 64, top : top + 64]))
    assert torch.equal(eval_transform(64, 0.875)(image), expected)
    assert torch.equal(eval_transform(64)(image), eval_transform(64, 1.0)(image))
    assert eval_transform(64, 0.875)(image).shape == eval_transform(64)(image).shape == (3, 64, 64)
