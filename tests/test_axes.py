"""The axis tables (skulab/axes.py) describe themselves, agree with the builders, the schema and the docs."""

import re
import subprocess
import sys

import pytest

from conftest import REPO, deep_merge, repo_params, write_params
from skulab import axes, cli
from skulab.errors import SkulabError
from skulab.params import DetectorConfig, RecognizerConfig, load_params

SCHEMA = {"recognizer": RecognizerConfig, "detector": DetectorConfig}


@pytest.mark.parametrize("axis", axes.AXES.values(), ids=lambda a: a.name)
def test_every_entry_describes_itself(axis):
    assert axis.entries, axis.name
    fields = set(SCHEMA[axis.section].model_fields)
    assert axis.key in fields
    for name, entry in axis.entries.items():
        assert entry.name == name and re.fullmatch(r"[a-z0-9_]+", name)
        assert entry.description.strip() and "\n" not in entry.description, name
        assert isinstance(entry.reads, frozenset) and entry.reads <= fields, (name, entry.reads - fields)
        if axis.kinds:
            assert entry.kind in axis.kinds, name
        else:
            assert entry.kind is None, name
    if axis.kinds:  # every kind has an entry: the kind sets are derived from the records
        assert {entry.kind for entry in axis.entries.values()} == set(axis.kinds)


def test_kind_sets_are_derived_from_the_records():
    from skulab.recognition import losses

    assert losses.METRIC_LOSSES == axes.losses_of_kind("metric") == {"triplet", "multi_similarity"}
    assert losses.CLASSIFICATION_LOSSES == axes.losses_of_kind("classification") == {"ce", "ce_label_smoothing"}
    assert axes.uses_metric_loss({"ce": 1.0, "triplet": 0.5}) and not axes.uses_metric_loss({"ce": 1.0, "triplet": 0.0})
    assert axes.uses_classifier({"ce_label_smoothing": 1.0}) and not axes.uses_classifier({"multi_similarity": 1.0})


def test_light_and_full_tables_agree():
    """Each model module builds its table from the records: same names, same order, the record inside."""
    from skulab.recognition import augment, backbones, losses, optimizers, schedules

    for full, light in (
        (losses.LOSSES, axes.LOSSES),
        (optimizers.OPTIMIZERS, axes.OPTIMIZERS),
        (schedules.SCHEDULES, axes.SCHEDULES),
    ):
        assert list(full) == list(light)
        for name, info in full.items():
            assert info.entry is light[name] and callable(info.build)
            assert (info.name, info.reads, info.kind, info.description) == (name, light[name].reads, light[name].kind, light[name].description)
    assert {name: info.decay for name, info in optimizers.OPTIMIZERS.items()} == {name: e.kind for name, e in axes.OPTIMIZERS.items()}
    assert list(augment.AUGMENTS) == list(axes.AUGMENTATIONS)
    assert backbones.BACKBONES == {name: e.timm_name for name, e in axes.BACKBONES.items()}
    assert all(e.timm_name for e in axes.BACKBONES.values())


def test_a_builder_table_that_differs_from_the_records_is_refused():
    def ce(cfg):
        return None

    with pytest.raises(RuntimeError, match=r"no builder for \['ce_label_smoothing', 'triplet', 'multi_similarity'\]"):
        axes.full_table("losses", axes.LOSSES, axes.Built, ce)

    def focal(cfg):
        return None

    with pytest.raises(RuntimeError, match=r"no record for \['focal'\]"):
        axes.full_table("losses", {"ce": axes.LOSSES["ce"]}, axes.Built, ce, focal)


def test_one_detector_record_per_config_file():
    files = sorted(p.stem for p in (REPO / axes.DETECTOR_CONFIGS).glob("*.py"))
    assert sorted(axes.DETECTORS) == files
    for name, entry in axes.DETECTORS.items():
        assert (REPO / entry.config).is_file()
        assert axes.detector_for_config(entry.config) is entry
        assert (entry.reads & axes.TWO_STAGE_KEYS == axes.TWO_STAGE_KEYS) == (entry.kind == "two_stage"), name
    # together they read every DetectorConfig key: none is unread by all
    assert set().union(*(e.reads for e in axes.DETECTORS.values())) == set(DetectorConfig.model_fields)
    assert axes.detector_for_config("elsewhere/faster_rcnn.py") is None


def test_detector_kind_matches_its_mmdet_config():
    """two_stage = an RPN and R-CNN heads, the parts the two-stage-only keys fill in (detection/config.py)."""
    pytest.importorskip("mmdet")
    from skulab.detection.config import load_config

    for entry in axes.DETECTORS.values():
        model = load_config(REPO / entry.config).model
        assert ("rpn_head" in model and "roi_head" in model) == (entry.kind == "two_stage"), entry.name


# --- docs name every registered entry ----------------------------------------------------------------

README_ROWS = {"backbones": "backbone", "optimizers": "optimizer", "losses": "loss", "schedules": "LR schedule", "augmentations": "augmentation"}
PARAMS_KEYS = {"backbones": "backbone", "optimizers": "optimizer", "losses": "loss", "schedules": "schedule", "augmentations": "augment"}


def _readme_row(first_cell: str) -> str:
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(f"| {first_cell}")]
    assert len(rows) >= 1, first_cell
    return rows[0]


@pytest.mark.parametrize("axis", list(README_ROWS))
def test_readme_axis_table_names_every_entry(axis):
    row = _readme_row(README_ROWS[axis])
    missing = [name for name in axes.AXES[axis].entries if f"`{name}`" not in row]
    assert not missing, f"README's {README_ROWS[axis]} row misses {missing}"


def test_readme_detector_table_names_every_detector_with_its_kind():
    text = (REPO / "README.md").read_text()
    for name, entry in axes.DETECTORS.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
        assert rows and entry.kind in rows[0] and entry.config in rows[0], name


def test_readme_optimizer_table_gives_each_weight_decay_form():
    text = (REPO / "README.md").read_text()
    for name, entry in axes.OPTIMIZERS.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
        assert rows and rows[0].rstrip(" |").endswith(entry.kind), name


@pytest.mark.parametrize("axis", list(PARAMS_KEYS))
def test_params_yaml_comments_name_every_entry(axis):
    text = (REPO / "params.yaml").read_text()
    lines = text[text.index("\nrecognizer:") :].splitlines()
    key = PARAMS_KEYS[axis]
    comments = [line.split("#", 1)[1] for line in lines if re.match(rf"\s+{key}:", line) and "#" in line]
    assert comments, key
    missing = [name for name in axes.AXES[axis].entries if not re.search(rf"\b{name}\b", comments[0])]
    assert not missing, f"params.yaml's {key} comment misses {missing}"


def test_params_yaml_names_every_detector_config():
    text = (REPO / "params.yaml").read_text()
    section = text[text.index("\ndetector:") : text.index("\ncrop:")]
    comments = "\n".join(line.split("#", 1)[1] for line in section.splitlines() if "#" in line)
    for entry in axes.DETECTORS.values():
        assert entry.config in section, entry.name
        assert re.search(rf"{entry.kind}[^.]*\b{entry.name}\b", comments), f"params.yaml's detector comments miss {entry.name} ({entry.kind})"


# --- `skulab list` -------------------------------------------------------------------------------------


def test_list_prints_every_axis(capsys):
    cli.main(["list"])
    out = capsys.readouterr().out
    for axis in axes.AXES.values():
        assert f"{axis.name} (" in out
        for name, entry in axis.entries.items():
            line = next(line for line in out.splitlines() if line.startswith(f"  {name} "))
            assert entry.description in line
            if entry.kind:
                assert entry.kind in line


def test_list_one_axis_shows_kind_and_keys(capsys):
    cli.main(["list", "losses"])
    out = capsys.readouterr().out
    assert out.startswith("losses (recognizer.loss; kinds: classification | metric)")
    assert "optimizers" not in out
    triplet = next(line for line in out.splitlines() if line.startswith("  triplet "))
    assert "metric" in triplet and "sampler_k, triplet_margin, triplet_soft_margin" in triplet
    cli.main(["list", "detectors"])
    retinanet = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  retinanet "))
    assert "one_stage" in retinanet and "rpn_nms_pre" not in retinanet


def test_list_refuses_an_unknown_axis(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["list", "optimisers"])
    assert exc.value.code == 2


# --- skulab check imports no model library --------------------------------------------------------------

NO_TORCH = """
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
from skulab.params import load_params
load_params(root / "params.yaml")
from skulab import cli
cli.main(["check", "--params", str(root / "params.yaml")])
cli.main(["list"])
heavy = sorted(m for m in ("torch", "torchvision", "timm", "pytorch_metric_learning", "pytorch_optimizer", "mmdet", "mmengine") if m in sys.modules)
assert not heavy, heavy
print("no torch")
"""


@pytest.mark.parametrize("crops", [False, True], ids=["no-crops", "with-crops"])
def test_check_does_not_import_torch(tmp_path, crops):
    write_params(tmp_path / "params.yaml", repo_params())
    if crops:  # check_schedules runs: the rounding arithmetic is torch-free
        (tmp_path / "data" / "crops").mkdir(parents=True)
        (tmp_path / "data" / "crops" / "stats.json").write_text('{"train": {"crops": 1280}}')
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout and "ok (" in result.stdout


@pytest.mark.parametrize(
    "case",
    [
        dict(schedule="warmup_multistep", warmup_epochs=0.05, milestones=[2], epochs=3),
        dict(schedule="warmup_cosine", warmup_epochs=0.05, epochs=3),
        dict(schedule="warmup_multistep", warmup_epochs=1, milestones=[2.1, 2.2], epochs=3),
        dict(schedule="warmup_multistep", warmup_epochs=1, milestones=[2], epochs=3),
        dict(schedule="warmup_cosine", warmup_epochs=1.9, epochs=2),
        dict(schedule="constant"),
    ],
)
@pytest.mark.parametrize("iters_per_epoch", [0, 1, 2, 7, 20])
def test_schedule_iterations_refuse_exactly_what_the_builders_refuse(tiny_params, case, iters_per_epoch):
    """The check's arithmetic and the torch schedulers: the same errors, and the same iterations."""
    torch = pytest.importorskip("torch")
    from conftest import config
    from skulab.recognition.schedules import create_schedule

    cfg = config(tiny_params, **case)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    try:
        create_schedule(optimizer, cfg, iters_per_epoch)
        built = None
    except SkulabError as exc:
        built = str(exc)
    try:
        it = axes.schedule_iterations(cfg, iters_per_epoch)
        checked = None
    except SkulabError as exc:
        checked = str(exc)
    assert checked == built
    if checked is None and cfg.schedule != "constant":
        assert it.warmup == round(cfg.warmup_epochs * iters_per_epoch) and it.total == cfg.epochs * iters_per_epoch


def test_basic_resize_is_defined_once():
    assert axes.BASIC_RESIZE == 1.15 and axes.basic_resize(64) == round(64 * 1.15) == 74 and axes.basic_resize(32) == 37
    for path in ("src/skulab/recognition/augment.py", "src/skulab/params.py"):
        assert "1.15" not in (REPO / path).read_text(), path


# --- a new user adds a loss: one builder, one record ---------------------------------------------------


@pytest.fixture
def contrastive(monkeypatch):
    """Registers a metric loss the way a user would: one builder in losses.py, one record in axes.py."""
    from skulab.recognition import losses

    def contrastive(cfg):
        from pytorch_metric_learning import losses as pml_losses

        loss = pml_losses.ContrastiveLoss(neg_margin=cfg.triplet_margin)
        return lambda out, labels: loss(out.embedding, labels)

    record = axes.Entry("contrastive", frozenset({"triplet_margin", "sampler_k"}), "contrastive loss, negatives beyond triplet_margin", "metric")
    monkeypatch.setitem(axes.LOSSES, "contrastive", record)
    monkeypatch.setitem(losses.LOSSES, "contrastive", losses.LossInfo(record, contrastive))
    axes.check_builders("losses", axes.LOSSES, losses.LOSSES)
    return record


def test_a_new_loss_is_picked_up_by_everything_that_reads_its_kind(contrastive, tiny_params, capsys, tmp_path):
    from skulab.recognition import losses

    loss = {"contrastive": 1.0}
    assert losses.uses_metric_loss(loss)  # the PK sampler (recognition/train.py)
    assert not losses.uses_classifier(loss)
    # CellTrainer.selection_metric: val_top1 when the head has a classifier, else val_proto_acc
    assert ("val_top1" if losses.uses_classifier(loss) else "val_proto_acc") == "val_proto_acc"
    assert ("val_top1" if losses.uses_classifier({"contrastive": 1.0, "ce": 1.0}) else "val_proto_acc") == "val_top1"
    assert "contrastive" in axes.losses_of_kind("metric")

    cli.main(["list", "losses"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  contrastive "))
    assert "metric" in line and "contrastive loss" in line and "sampler_k, triplet_margin" in line

    # params accept it, and its kind brings the PK batch check
    ok = {"contrastive": {"loss": {"contrastive": 1.0}, "triplet_margin": 0.5}}
    params = load_params(write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"variants": {"baseline": {}, **ok}}})))
    assert params.recognizer.resolve("contrastive").loss == {"contrastive": 1.0}
    odd = {"x": {"loss": {"contrastive": 1.0}, "batch_size": 30}}
    with pytest.raises(SkulabError, match=r"batch_size \(30\) must be a multiple of sampler_k \(4\)"):
        load_params(write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"variants": odd}})))

    # and the builder trains: a PK-style batch gives a finite loss
    torch = pytest.importorskip("torch")
    from conftest import config
    from skulab.recognition.head import RecognizerOutput

    weighted = losses.WeightedLoss(config(tiny_params, loss=loss, triplet_margin=0.5))
    embedding = torch.randn(8, 4)
    total, parts = weighted(RecognizerOutput(embedding=embedding, feature=embedding, logits=torch.randn(8, 3)), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
    assert torch.isfinite(total) and set(parts) == {"contrastive"}


def test_check_refuses_a_key_the_new_loss_does_not_read(contrastive, tmp_path, capsys):
    variants = {"baseline": {}, "x": {"loss": {"contrastive": 1.0}, "ms_alpha": 3.0}}
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"variants": variants}}))
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--params", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "recognizer.variants.x.ms_alpha: not read by loss 'contrastive' (read by multi_similarity); remove it or change loss" in err


def test_check_refuses_a_key_the_method_ignores(tmp_path, capsys):
    variants = {"baseline": {}, "x": {"loss": {"triplet": 1.0}, "triplet_soft_margin": True, "triplet_margin": 0.3}}
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"variants": variants}}))
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--params", str(path)])
    assert exc.value.code == 2
    assert "recognizer.variants.x.triplet_margin: not read by loss 'triplet' when triplet_soft_margin is true" in capsys.readouterr().err


@pytest.mark.parametrize("key,value", [("rpn_nms_pre", 100), ("rpn_max_per_img", 50), ("rcnn_sampler_num", 64), ("fc_out_channels", 128), ("roi_align", "mmcv")])
@pytest.mark.parametrize("detector", ["retinanet", "fcos", "atss"])
def test_a_one_stage_detector_refuses_two_stage_keys(tmp_path, detector, key, value):
    variants = {"faster_rcnn": {"config": "configs/detectors/faster_rcnn.py", key: value}, "x": {"config": f"configs/detectors/{detector}.py", key: value}}
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"detector": {"variants": variants}}))
    with pytest.raises(SkulabError) as exc:
        load_params(path, sections=("detector",))
    assert str(exc.value) == (
        f"{path}: detector.variants.x.{key}: not read by one_stage detector '{detector}' (read by faster_rcnn, cascade_rcnn); "
        "remove it or change config"
    )


def test_two_stage_detectors_accept_their_keys(tmp_path):
    variants = {
        "faster_rcnn": {"config": "configs/detectors/faster_rcnn.py", "rpn_nms_pre": 100, "roi_align": "mmcv"},
        "cascade_rcnn": {"config": "configs/detectors/cascade_rcnn.py", "fc_out_channels": 128},
        "retinanet": {"config": "configs/detectors/retinanet.py", "optimizer": "adamw", "lr": 0.001},
    }
    params = load_params(write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"detector": {"variants": variants}})), sections=("detector",))
    assert params.detector.resolve("faster_rcnn").rpn_nms_pre == 100


def test_check_refuses_embedding_dim_with_the_linear_head(tmp_path, capsys):
    variants = {"baseline": {}, "x": {"head": "linear", "embedding_dim": 64}, "y": {"head": "linear"}}
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"variants": variants}}))
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--params", str(path)])
    assert exc.value.code == 2
    assert "recognizer.variants.x.embedding_dim: not read by head 'linear' (read by bnneck); remove it or change head" in capsys.readouterr().err
