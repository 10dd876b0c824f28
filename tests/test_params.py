"""params.yaml schema: the shipped file is valid; malformed params give one-line errors naming the key."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, deep_merge, repo_params, write_params
from skulab import axes
from skulab.errors import SkulabError
from skulab.params import RecognizerConfig, load_params


def test_no_detector_variants_is_a_recognition_only_study(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"detector": {"variants": {}}})))
    assert params.detector.variants == {} and params.crop.detector == "best"


def test_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.prepare.synthetic.num_classes == 23
    assert len(params.recognizer.variants) * len(params.recognizer.seeds) >= 6
    for name in params.recognizer.variants:
        params.recognizer.resolve(name)


MALFORMED = [
    # (override of params.yaml, expected fragment of the one-line error)
    ({"prepare": {"seed": "zero"}}, "prepare.seed: Input should be a valid integer"),
    ({"prepare": {"synthetic": {"num_classes": 1}}}, "prepare.synthetic.num_classes: Input should be greater than or equal to 2"),
    ({"prepare": {"source": "kaggle"}}, "prepare.source: Input should be 'synthetic'"),
    ({"prepare": {"colour": 3}}, "prepare.colour: unknown key"),
    ({"crop": {"padding": 0.9}}, "crop.padding: Input should be less than or equal to 0.5"),
    ({"recognizer": {"base": {"optimizer": "adamx"}}}, "recognizer.base.optimizer: unknown optimizer 'adamx'; allowed: adam, adamw, sgd, radam, radam_lookahead, ranger"),
    ({"recognizer": {"base": {"backbone": "vgg"}}}, "recognizer.base.backbone: unknown backbone 'vgg'; allowed: mobilenetv3_small"),
    ({"recognizer": {"base": {"lr": -1}}}, "recognizer.base.lr: Input should be greater than 0"),
    ({"recognizer": {"variants": {"x": {"loss": {"focal": 1.0}}}}}, "recognizer.variants.x.loss: unknown loss 'focal'; allowed: ce, ce_label_smoothing, triplet, multi_similarity"),
    ({"recognizer": {"variants": {"x": {"schedule": "cosine"}}}}, "recognizer.variants.x.schedule: unknown schedule 'cosine'; allowed: constant, warmup_multistep, warmup_cosine"),
    ({"recognizer": {"variants": {"x": {"augment": "mixup"}}}}, "recognizer.variants.x.augment: unknown augmentation 'mixup'; allowed: none, basic, autoaugment"),
    ({"recognizer": {"variants": {"x": {"learning_rate": 0.1}}}}, "recognizer.variants.x.learning_rate: unknown key"),
    ({"recognizer": {"variants": {"bad-name": {}}}}, "recognizer.variants.bad-name.[key]: String should match pattern"),
    ({"recognizer": {"seeds": [0, 0]}}, "recognizer.seeds: seeds must be unique"),
    ({"recognizer": {"seeds": []}}, "recognizer.seeds: List should have at least 1 item"),
    ({"recognizer": {"variants": {"x": {"loss": {"ce": 0.0}}}}}, "recognizer.variants.x.loss: at least one loss needs a weight > 0"),
    ({"recognizer": {"variants": {"x": {"loss": {"triplet": 1.0}, "batch_size": 30}}}}, "batch_size (30) must be a multiple of sampler_k (4)"),
    ({"recognizer": {"variants": {"x": {"milestones": [9]}}}}, "milestones [9.0] must be increasing and between warmup_epochs and epochs"),
    ({"recognizer": {"variants": {"x": {"pretrained": "weights/missing.pt"}}}}, "recognizer.variants.x.pretrained: must be none, imagenet or an existing weights file; 'weights/missing.pt' not found"),
    ({"evaluate": {"rank_by": "loss"}}, "evaluate.rank_by: must be a validation metric every head has"),
    ({"evaluate": {"rank_by": "test_top1"}}, "evaluate.rank_by: must be a validation metric every head has"),
    ({"evaluate": {"baseline": "plain"}}, "evaluate.baseline: 'plain' is not a recognizer variant; allowed: baseline,"),
    ({"tracker": {}}, "tracker: unknown section; allowed: mlflow, prepare, detector, crop, recognizer, evaluate"),
    ({"detector": {"base": {"roi_align": "fast"}}}, "detector.base.roi_align: Input should be 'torchvision' or 'mmcv'"),
    ({"detector": {"base": {"config": "configs/detectors/faster_rcnn.py"}}}, "detector.base.config: set it in each variant, not in base"),
    ({"detector": {"variants": {"frcnn": {"config": "configs/detectors/faster_rcnn.py", "epochs": 0}}}}, "detector.variants.frcnn.epochs: Input should be greater than or equal to 1"),
    ({"detector": {"variants": {"best": {"config": "configs/detectors/faster_rcnn.py"}}}}, "detector.variants: 'best' is reserved"),
    ({"crop": {"match_iou": 0}}, "crop.match_iou: Input should be greater than 0"),
    ({"crop": {"score_threshold": "best"}}, "crop.score_threshold: must be auto or a number in [0, 1], got 'best'"),
    ({"crop": {"score_threshold": 1.5}}, "crop.score_threshold: must be auto or a number in [0, 1], got 1.5"),
    # Crops are stored once at stored_size: a bigger image_size would train on upsampled pixels.
    ({"recognizer": {"variants": {"big": {"image_size": 128}}}}, "crop.stored_size: 74 is smaller than recognizer variant 'big' image_size 128; set it to at least 128 (round(image_size x 1.15) = 147 leaves room for the random crop)"),
    # A PK batch of one class has no negative: the triplet loss would be 0.0 on every batch.
    ({"recognizer": {"variants": {"x": {"loss": {"triplet": 1.0}, "batch_size": 4}}}}, "recognizer.variants.x: a PK batch of batch_size (4) / sampler_k (4) = 1 class has no negatives"),
    ({"recognizer": {"variants": {"x": {"betas": [0.9, 1.0]}}}}, "recognizer.variants.x.betas.1: Input should be less than 1"),
    ({"recognizer": {"variants": {"x": {"betas": [-0.1, 0.999]}}}}, "recognizer.variants.x.betas.0: Input should be greater than or equal to 0"),
    # A variant key its methods do not read would train a copy of the baseline under another name.
    ({"recognizer": {"variants": {"x": {"momentum": 0.5}}}}, "recognizer.variants.x.momentum: not read by optimizer 'adam' (read by sgd); remove it or change optimizer"),
    ({"recognizer": {"variants": {"x": {"lookahead_k": 6}}}}, "recognizer.variants.x.lookahead_k: not read by optimizer 'adam' (read by radam_lookahead, ranger)"),
    ({"recognizer": {"variants": {"x": {"optimizer": "sgd", "betas": [0.8, 0.99]}}}}, "recognizer.variants.x.betas: not read by optimizer 'sgd' (read by adam, adamw, radam, radam_lookahead, ranger)"),
    ({"recognizer": {"variants": {"x": {"triplet_margin": 0.3}}}}, "recognizer.variants.x.triplet_margin: not read by loss 'ce' (read by triplet)"),
    ({"recognizer": {"variants": {"x": {"sampler_k": 8}}}}, "recognizer.variants.x.sampler_k: not read by loss 'ce' (read by triplet, multi_similarity)"),
    ({"recognizer": {"variants": {"x": {"loss": {"triplet": 1.0}, "triplet_soft_margin": True, "triplet_margin": 0.3}}}}, "recognizer.variants.x.triplet_margin: not read by loss 'triplet' when triplet_soft_margin is true"),
    ({"recognizer": {"variants": {"x": {"schedule": "warmup_cosine", "milestones": [2]}}}}, "recognizer.variants.x.milestones: not read by schedule 'warmup_cosine' (read by warmup_multistep)"),
    ({"recognizer": {"variants": {"x": {"end_lr_factor": 0.1}}}}, "recognizer.variants.x.end_lr_factor: not read by schedule 'warmup_multistep' (read by warmup_cosine)"),
    ({"recognizer": {"variants": {"x": {"warmup_epochs": 0, "warmup_factor": 0.5}}}}, "recognizer.variants.x.warmup_factor: not read by schedule 'warmup_multistep' when warmup_epochs is 0"),
    # A detector variant key only another kind of detector reads (skulab.axes.DETECTORS).
    ({"detector": {"variants": {"r": {"config": "configs/detectors/retinanet.py", "rpn_nms_pre": 100}}}}, "detector.variants.r.rpn_nms_pre: not read by one_stage detector 'retinanet' (read by faster_rcnn, cascade_rcnn); remove it or change config"),
    ({"detector": {"variants": {"f": {"config": "configs/detectors/fcos.py", "roi_align": "mmcv"}}}}, "detector.variants.f.roi_align: not read by one_stage detector 'fcos' (read by faster_rcnn, cascade_rcnn)"),
    # Two names for one configuration.
    ({"recognizer": {"variants": {"a": {}, "b": {"optimizer": "adam"}}}}, "recognizer.variants.b: resolves to the same configuration as variant 'a'"),
    ({"recognizer": {"variants": {"a": {"lr": 0.01}, "b": {"lr": 0.01, "loss": {"ce": 1.0, "triplet": 0.0}}}}}, "recognizer.variants.b: resolves to the same configuration as variant 'a'"),
]


@pytest.mark.parametrize("override,expected", MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_malformed_params_name_the_key(tmp_path, override, expected):
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), override))
    with pytest.raises(SkulabError) as exc:
        load_params(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_variants_that_set_only_what_their_methods_read_are_valid(tmp_path):
    variants = {
        "baseline": {},
        "sgd": {"optimizer": "sgd", "momentum": 0.5},
        "ranger": {"optimizer": "ranger", "lookahead_k": 6, "betas": [0.95, 0.999]},
        "soft": {"loss": {"triplet": 1.0}, "triplet_soft_margin": True, "sampler_k": 8},
        "cosine": {"schedule": "warmup_cosine", "end_lr_factor": 0.0, "epochs": 3},  # base milestones [4, 5] are not read
        "no_decay_split": {"decay_norm_and_bias": True},
    }
    params = load_params(write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"variants": variants}})))
    assert params.recognizer.resolve("cosine").epochs == 3


def test_axis_records_name_config_keys():
    """The keys each optimizer, loss and schedule reads are recognizer config keys (the variant check derives from them)."""
    for table in (axes.OPTIMIZERS, axes.LOSSES, axes.SCHEDULES, axes.AUGMENTATIONS, axes.BACKBONES):
        for name, info in table.items():
            assert info.name == name and info.reads <= set(RecognizerConfig.model_fields), name
    assert {info.kind for info in axes.OPTIMIZERS.values()} == {"L2", "decoupled"}


def test_missing_key_and_section(tmp_path):
    data = repo_params()
    del data["recognizer"]["base"]["lr"]
    del data["evaluate"]
    path = write_params(tmp_path / "params.yaml", data)
    with pytest.raises(SkulabError, match=r"evaluate: missing section"):
        load_params(path)
    with pytest.raises(SkulabError, match=r"recognizer.base.lr: missing key"):
        load_params(path, sections=("recognizer",))


def test_a_stage_validates_only_its_sections(tmp_path):
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"base": {"lr": -1}}}))
    assert load_params(path, sections=("prepare",)).prepare.seed == 0


def test_variant_inherits_error_from_base_is_blamed_on_base(tmp_path):
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"recognizer": {"base": {"epochs": 0}}}))
    with pytest.raises(SkulabError, match=r"recognizer.base.epochs: Input should be greater than or equal to 1"):
        load_params(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  seed: [1\nrecognizer: {}\n")
    with pytest.raises(SkulabError, match=r"invalid YAML at line \d"):
        load_params(path)


@pytest.mark.parametrize("command", [["skulab", "check"], [sys.executable, "stages/prepare.py"]])
def test_cli_prints_one_line_and_exits_2(tmp_path, command):
    bad = deep_merge(repo_params(), {"prepare": {"synthetic": {"lighting": 2}}, "recognizer": {"base": {"optimizer": "adamx"}}})
    write_params(tmp_path / "params.yaml", bad)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "stages").symlink_to(REPO / "stages")
    exe = [str(Path(sys.executable).parent / "skulab"), "check"] if command[0] == "skulab" else command
    result = subprocess.run(exe, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "params.yaml: " in lines[0]
    assert "prepare.synthetic.lighting" in lines[0]


def test_check_ok(tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "skulab"), "check", "--params", str(REPO / "params.yaml")], capture_output=True, text=True)
    assert result.returncode == 0
    assert "ok" in result.stdout


def test_check_refuses_a_warmup_of_zero_iterations_once_crops_exist(tmp_path):
    """How many iterations an epoch has depends on the train crops: check reads data/crops/stats.json."""
    params = deep_merge(repo_params(), {"recognizer": {"variants": {"baseline": {}, "short_warmup": {"warmup_epochs": 0.005}}}})
    write_params(tmp_path / "params.yaml", params)
    skulab = [str(Path(sys.executable).parent / "skulab"), "check", "--params", str(tmp_path / "params.yaml")]
    assert subprocess.run(skulab, capture_output=True, text=True).returncode == 0  # no crops yet: nothing to count
    (tmp_path / "data" / "crops").mkdir(parents=True)
    (tmp_path / "data" / "crops" / "stats.json").write_text(json.dumps({"train": {"crops": 1280}}))  # 20 iterations of 64
    result = subprocess.run(skulab, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "recognizer.variants.short_warmup: warmup_epochs 0.005 is 0 warm-up iterations at 20 iterations per epoch" in result.stderr
