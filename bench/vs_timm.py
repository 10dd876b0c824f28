"""Benchmark: a skulab recognizer cell against timm's own training recipe, same backbone, same budget.

Both paths train `recognizer.base.backbone` from scratch at its image_size for its epochs, batch
size, optimizer, lr, weight decay and LR schedule (params.yaml), with label smoothing
`label_smoothing` (0.1, timm train.py's default) and timm's default train augmentation, on the train
crops of `--crops`, select the epoch with the best val top-1, and report top-1 of that epoch on the
ground-truth test crops (`test_gt`; val when the crops have none) and on the detector's test crops:

- timm: timm's building blocks, as timm's train.py wires them: `timm.create_model` (its own
  classifier), `timm.data.create_transform(is_training=True)` on PIL images (its eval transform for
  val and test), `timm.optim.create_optimizer_v2` (no decay on norms and biases),
  `timm.scheduler.create_scheduler_v2` stepped per update, `timm.loss.LabelSmoothingCrossEntropy`;
- skulab: a real cell, `skulab.recognition.train.CellTrainer.fit`, with `augment: timm`,
  `loss: {ce_label_smoothing: 1.0}` and `head: linear` (timm's classifier on the pooled features;
  `--head bnneck` for the embedding -> BNNeck -> classifier head), and its own eval transform.

`--seeds 0 1 2` trains both paths once per seed (alternating order) and reports the mean top-1 over
the seeds beside each seed's: one seed's top-1 on ~400 test crops moves by a few points.

Both read the crops through `skulab.recognition.data.load_crops` (the timm path turns them into PIL
images once, so neither pays for decoding), use the DataLoader in the main process (no workers,
as a cell does), the same seed and the same torch threads (`--threads`), and each runs in a fresh
process, one after the other (`--rounds N`: N times each, in alternating order). Epoch time is the
training pass (loading and augmenting the batches, forward, backward, step), median over epochs,
in wall and CPU seconds; the time with each path's own validation is reported beside. Each model
is also scored with the other path's eval transform, to tell training from evaluation apart. Then
the data path alone: each train augmentation applied to 400 train crops, at the runs' threads and
at torch's default.

Writes metrics/bench/vs_timm.{json,md}. Run: `nice -n 5 .venv/bin/python bench/vs_timm.py`
(6 minutes a round at --threads 1 on 2 cores shared with other jobs); `--epochs N` shortens both
runs (milestones and warm-up scaled to fit). On a machine whose cores are busy with other jobs,
use `--threads 1`: torch's OpenMP threads otherwise spin-wait for each other (10x slower steps).
"""

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from skulab.io import read_csv, read_json, write_json_atomic, write_text_atomic  # noqa: E402
from skulab.layout import GT_TEST  # noqa: E402
from skulab.params import RecognizerConfig, load_params  # noqa: E402
from skulab.recognition import augment  # noqa: E402
from skulab.recognition.backbones import BACKBONES  # noqa: E402
from skulab.recognition.data import CropSet, load_crops  # noqa: E402

PATHS = ("timm", "skulab")
# timm's recipe with one skulab part swapped in (--ablations): which part makes a difference
ABLATIONS = {"timm_skulab_head": {"head": "skulab"}, "timm_skulab_augmentation": {"augmentation": "skulab"}}
EVAL_BATCH = 256


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _config(params_file: Path, epochs: int | None, head: str = "linear") -> RecognizerConfig:
    """recognizer.base with the timm augmentation, label smoothing and `head`; --epochs scales the milestones."""
    base = dict(load_params(params_file, sections=("recognizer",)).recognizer.base)
    base.update(augment="timm", loss={"ce_label_smoothing": 1.0}, head=head, crop_pct=0.875)  # timm's eval: resize 1/0.875, centre crop
    if epochs is not None and epochs != base["epochs"]:
        scale = epochs / base["epochs"]
        base["milestones"] = [m * scale for m in base["milestones"]]
        base["warmup_epochs"] = base["warmup_epochs"] * scale
        base["epochs"] = epochs
    config = RecognizerConfig.model_validate(base, context={"root": params_file.parent})
    if config.pretrained != "none":
        raise SystemExit("bench/vs_timm.py compares training from scratch: set recognizer.base.pretrained to none")
    return config


def _eval_split(crops: Path) -> str:
    return GT_TEST if read_json(crops / "stats.json").get(GT_TEST, {}).get("crops") else "val"


def _pil(crops: CropSet) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())) for image in crops.images]


class _Pil(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


def _timm_scheduler(optimizer, cfg: RecognizerConfig, updates_per_epoch: int):
    """skulab's schedule expressed in timm's scheduler factory, stepped per update as the cell's."""
    from timm.scheduler import create_scheduler_v2

    if cfg.warmup_epochs and cfg.warmup_method != "linear":
        raise SystemExit(f"timm's schedulers warm up linearly; warmup_method {cfg.warmup_method} has no timm equivalent")
    names = {"warmup_multistep": "multistep", "warmup_cosine": "cosine", "constant": "constant"}
    scheduler, epochs = create_scheduler_v2(
        optimizer,
        sched=names[cfg.schedule],
        num_epochs=cfg.epochs,
        decay_milestones=list(cfg.milestones),
        decay_rate=cfg.gamma,
        min_lr=cfg.lr * cfg.end_lr_factor,
        warmup_epochs=cfg.warmup_epochs if cfg.schedule != "constant" else 0,
        warmup_lr=cfg.lr * cfg.warmup_factor,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    assert epochs == cfg.epochs, (epochs, cfg.epochs)
    return scheduler


@torch.no_grad()
def _top1(model, images, labels, transform) -> float:
    model.eval()
    loader = torch.utils.data.DataLoader(_Pil(images, labels, transform), batch_size=EVAL_BATCH)
    correct = 0
    for x, y in loader:
        out = model(x)
        correct += (getattr(out, "logits", out).argmax(dim=1) == y).sum().item()  # a Recognizer returns its heads
    return correct / len(labels)


class _Logits(torch.nn.Module):
    """skulab's Recognizer (embedding -> BNNeck -> classifier) as a plain classifier for timm's loop."""

    def __init__(self, cfg: RecognizerConfig, num_classes: int):
        super().__init__()
        from skulab.recognition.head import Recognizer

        self.recognizer = Recognizer(cfg.backbone, num_classes, cfg.embedding_dim)

    def forward(self, images):
        return self.recognizer(images).logits


def run_timm(cfg: RecognizerConfig, crops: Path, seed: int, workdir: Path, head: str = "timm", augmentation: str = "timm") -> dict:
    """timm's recipe; `head` or `augmentation` "skulab" swaps in skulab's Recognizer or its v2 `timm` augmentation."""
    import timm
    from timm.data import create_transform
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    from skulab.recognition.train import seed_everything

    seed_everything(seed)  # the cell's global settings (seeds, deterministic algorithms)
    eval_split = _eval_split(crops)
    splits = {split: load_crops(crops, split).products() for split in dict.fromkeys(("train", "val", "test", eval_split))}
    pil = {split: (_pil(s), s.labels) for split, s in splits.items()}
    train_tf, eval_tf = create_transform(cfg.image_size, is_training=True), create_transform(cfg.image_size)
    train_images = pil["train"][0]
    if augmentation == "skulab":  # uint8 CHW tensors through augment.train_transform, as a cell's loader
        train_images, train_tf = list(splits["train"].images), augment.train_transform("timm", cfg.image_size)
    num_classes = len(splits["train"].class_names)
    if head == "skulab":
        model = _Logits(cfg, num_classes)
    else:
        model = timm.create_model(BACKBONES[cfg.backbone], pretrained=False, num_classes=num_classes)
    loader = torch.utils.data.DataLoader(
        _Pil(train_images, splits["train"].labels, train_tf), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    opt_args = {"betas": tuple(cfg.betas)} if cfg.optimizer in ("adam", "adamw", "radam") else {"momentum": cfg.momentum}
    optimizer = create_optimizer_v2(
        model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, filter_bias_and_bn=not cfg.decay_norm_and_bias, **opt_args
    )
    scheduler = _timm_scheduler(optimizer, cfg, len(loader))
    criterion = LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    updates, best, history = 0, {"val_top1": -1.0}, []
    for epoch in range(cfg.epochs):
        started, cpu = time.perf_counter(), time.process_time()
        model.train()
        total = 0.0
        for images, labels in loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            total += loss.item() * len(labels)
        scheduler.step(epoch + 1)
        train_seconds, train_cpu = time.perf_counter() - started, time.process_time() - cpu
        val_top1 = _top1(model, *pil["val"], eval_tf)
        row = {
            "epoch": epoch + 1, "train_loss": total / (len(loader) * cfg.batch_size), "val_top1": val_top1,
            "train_seconds": train_seconds, "train_cpu_seconds": train_cpu, "epoch_seconds": time.perf_counter() - started,
        }
        history.append(row)
        print(f"timm epoch {epoch + 1}: {row}", flush=True)
        if val_top1 > best["val_top1"]:
            best = {"val_top1": val_top1, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    crops_eval = splits[eval_split]
    return {
        "best_epoch": best["epoch"],
        "val_top1": best["val_top1"],
        "eval_split": eval_split,
        "eval_top1": _top1(model, *pil[eval_split], eval_tf),
        "eval_top1_other_eval_transform": _top1(model, list(crops_eval.images), crops_eval.labels, augment.eval_transform(cfg.image_size)),
        "test_top1": _top1(model, *pil["test"], eval_tf),
        "history": history,
    }


def run_skulab(cfg: RecognizerConfig, crops: Path, seed: int, workdir: Path) -> dict:
    import mlflow

    from skulab.recognition.train import CellTrainer

    uri = f"sqlite:///{workdir / 'mlflow.db'}"  # never the repo's store
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    trainer = CellTrainer(cfg, seed, crops, workdir / "model", workdir / "metrics")
    passes = []
    if hasattr(trainer, "_train_epoch"):  # time the training pass alone, as for the timm path
        train_epoch = trainer._train_epoch

        def timed(*args, **kwargs):
            started, cpu = time.perf_counter(), time.process_time()
            row = train_epoch(*args, **kwargs)
            passes.append((time.perf_counter() - started, time.process_time() - cpu))
            return row

        trainer._train_epoch = timed
    with mlflow.start_run() as run:
        final = trainer.fit(run.info.run_id)
    history = []
    for i, row in enumerate(read_csv(workdir / "metrics" / "history.csv")):
        train_seconds, train_cpu = passes[i] if passes else (float(row["epoch_seconds"]), None)
        history.append({
            "epoch": int(row["epoch"]), "train_loss": float(row["train_loss"]), "val_top1": float(row["val_top1"]),
            "train_seconds": train_seconds, "train_cpu_seconds": train_cpu, "epoch_seconds": float(row["epoch_seconds"]),
        })
    eval_split = _eval_split(crops)
    from timm.data import create_transform

    from skulab.recognition.head import build_recognizer

    crops_eval = load_crops(crops, eval_split).products()
    model = build_recognizer(cfg, len(crops_eval.class_names), pretrained="none")
    model.load_state_dict(torch.load(workdir / "model" / "best.pt", map_location="cpu", weights_only=False)["model"])
    return {
        "eval_top1_other_eval_transform": _top1(model, _pil(crops_eval), crops_eval.labels, create_transform(cfg.image_size)),
        "best_epoch": final["best_epoch"],
        "val_top1": final["val_top1"],
        "eval_split": eval_split,
        "eval_top1": final["test_gt_top1"] if eval_split == GT_TEST else final["val_top1"],
        "test_top1": final["test_top1"],
        "history": history,
    }


def profile_augmentation(cfg: RecognizerConfig, crops: Path, rounds: int = 2, samples: int = 400) -> dict:
    """Each train augmentation once over the first `samples` train crops, in alternating rounds: ms per sample (median)."""
    from timm.data import create_transform
    from torchvision.transforms import v2

    train = load_crops(crops, "train")
    images = list(train.images[:samples])
    pil = _pil(CropSet(train.images[:samples], train.labels[:samples], train.class_names, train.crops[:samples]))
    size = cfg.image_size
    uint8_jitter = v2.Compose([  # augment.timm as it would be with the jitter on uint8 (torchvision's uint8 kernels)
        v2.RandomResizedCrop(size, scale=augment.TIMM_SCALE, ratio=augment.TIMM_RATIO, antialias=True),
        v2.RandomHorizontalFlip(augment.TIMM_HFLIP),
        v2.ColorJitter(augment.TIMM_COLOR_JITTER, augment.TIMM_COLOR_JITTER, augment.TIMM_COLOR_JITTER),
        *augment._normalize(),
    ])
    pipelines = {
        "timm create_transform (PIL)": (create_transform(size, is_training=True), pil),
        "skulab augment: timm (v2, uint8 crop, float32 jitter)": (augment.train_transform("timm", size), images),
        "v2 with the jitter on uint8 (before the fix)": (uint8_jitter, images),
        "skulab augment: basic (v2, uint8)": (augment.train_transform("basic", size), images),
    }
    times = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, (transform, data) in pipelines.items():
            started = time.perf_counter()
            for x in data:
                transform(x)
            times[name].append((time.perf_counter() - started) / len(data) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _child(args) -> None:
    cfg = RecognizerConfig.model_validate(json.loads(args.config))
    crops, workdir = Path(args.crops), Path(args.workdir)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "profile":
        result = profile_augmentation(cfg, crops)
    elif args.child in ABLATIONS:
        result = run_timm(cfg, crops, args.seed, workdir, **ABLATIONS[args.child])
    else:
        result = {"timm": run_timm, "skulab": run_skulab}[args.child](cfg, crops, args.seed, workdir)
    result["torch_threads"] = torch.get_num_threads()
    (workdir / "result.json").write_text(json.dumps(result))


def _spawn(what: str, cfg: RecognizerConfig, crops: Path, seed: int, threads: int) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory(prefix=f"vs_timm_{what}_") as tmp:
        command = [
            sys.executable, __file__, "--child", what, "--config", cfg.model_dump_json(), "--crops", str(crops),
            "--seed", str(seed), "--workdir", tmp, "--threads", str(threads),
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        return json.loads((Path(tmp) / "result.json").read_text()), time.perf_counter() - started


def _median(history: list[dict], key: str) -> float | None:
    values = [row[key] for row in history if row[key] is not None]
    return statistics.median(values) if values else None


ACCURACIES = ("eval_top1", "eval_top1_other_eval_transform", "test_top1", "val_top1")


def _summary(rounds: list[dict]) -> dict:
    """Accuracies: the mean over seeds of each seed's first round (later rounds repeat it); epoch times over every round's epochs."""
    every = [row for result in rounds for row in result["history"]]
    per_seed: dict[int, dict] = {}
    for result in rounds:
        per_seed.setdefault(result.get("seed", 0), result)
    return {
        **{k: v for k, v in rounds[0].items() if k != "history"},
        **{key: statistics.mean(result[key] for result in per_seed.values()) for key in ACCURACIES},
        "eval_top1_by_seed": {str(seed): result["eval_top1"] for seed, result in per_seed.items()},
        "first_val_top1": rounds[0]["val_top1"],
        "eval_top1_every_round": [result["eval_top1"] for result in rounds],
        "train_epoch_seconds": _median(every, "train_seconds"),
        "train_epoch_cpu_seconds": _median(every, "train_cpu_seconds"),
        "epoch_seconds_with_val": _median(every, "epoch_seconds"),
        "history": rounds[0]["history"],
        "history_later_rounds": [result["history"] for result in rounds[1:]],
    }


def _markdown(out: dict) -> str:
    cfg, timm_, sku = out["config"], out["paths"]["timm"], out["paths"]["skulab"]
    split = "ground-truth test crops (`test_gt`)" if timm_["eval_split"] == GT_TEST else "val crops (no `test_gt`)"
    lines = [
        f"# skulab cell vs timm's own recipe: {cfg['backbone']} from scratch, {cfg['image_size']} px, {cfg['epochs']} epochs",
        "",
        f"Measured {out['date']} on {out['machine']['cores']} cores ({out['machine']['cpu']}, torch threads: "
        f"{timm_['torch_threads']}, nice {out['machine']['nice']}, OMP_WAIT_POLICY {out['machine']['OMP_WAIT_POLICY']}, load average "
        f"{out['machine']['load_average_1min_at_end']:.1f} at the end), `{out['command']}`: {out['wall_seconds'] / 60:.1f} min in all. "
        f"Crops: `{out['crops']}` ({out['train_crops']} train, {out['eval_crops']} {timm_['eval_split']}). Budget for both: "
        f"{cfg['epochs']} epochs of batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']} weight decay {cfg['weight_decay']} "
        f"(none on norms and biases), {cfg['schedule']} (warm-up {cfg['warmup_epochs']:g} epochs from x{cfg['warmup_factor']}, "
        f"milestones {cfg['milestones']}, gamma {cfg['gamma']}) per update, label smoothing {cfg['label_smoothing']}, timm's "
        f"default train augmentation, seeds {', '.join(map(str, out['seeds']))} (accuracies: mean over the seeds), best val epoch; "
        f"{out['rounds']} round(s) per path and seed in alternating order (epoch times: median over every round's epochs). "
        f"skulab's cell has `head: {cfg['head']}`. See bench/vs_timm.py for what each path does.",
        "",
        "| path | top-1, " + split + " | per seed | same model, the other path's eval transform | top-1, detector's test crops | val top-1 (best epoch) "
        "| train s/epoch (median) | train CPU s/epoch | s/epoch with its validation |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("timm", "timm: create_model, create_transform (PIL), create_optimizer_v2, create_scheduler_v2, LabelSmoothingCrossEntropy"),
                        ("skulab", f"skulab: CellTrainer, `augment: timm`, `ce_label_smoothing`, `head: {cfg['head']}`")):
        p = out["paths"][name]
        cpu = f"{p['train_epoch_cpu_seconds']:.2f}" if p["train_epoch_cpu_seconds"] is not None else "n/a"
        lines.append(
            f"| {label} | {p['eval_top1']:.3f} | {', '.join(f'{v:.3f}' for v in p['eval_top1_by_seed'].values())} | {p['eval_top1_other_eval_transform']:.3f} | {p['test_top1']:.3f} | {p['val_top1']:.3f} (epoch {p['best_epoch']}) | "
            f"{p['train_epoch_seconds']:.2f} | {cpu} | {p['epoch_seconds_with_val']:.2f} |"
        )
    goal = out["goal"]
    lines += [
        "",
        f"Goal (issue \"Real datasets and the first run\"): skulab's top-1 >= timm's: **{'met' if goal['accuracy_met'] else 'not met'}** "
        f"({sku['eval_top1']:.3f} vs {timm_['eval_top1']:.3f}); skulab's training epoch <= 1.1x timm's: "
        f"**{'met' if goal['epoch_time_met'] else 'not met'}** ({goal['epoch_time_ratio']:.2f}x wall"
        + (f", {goal['epoch_cpu_time_ratio']:.2f}x CPU)." if goal["epoch_cpu_time_ratio"] else ")."),
        "",
        "Per epoch of the first seed's first round (train s, val top-1):",
        "",
        "| epoch | timm train s | timm val top-1 | skulab train s | skulab val top-1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(timm_["history"], sku["history"]):
        lines.append(f"| {a['epoch']} | {a['train_seconds']:.2f} | {a['val_top1']:.3f} | {b['train_seconds']:.2f} | {b['val_top1']:.3f} |")
    if out.get("ablations"):
        lines += [
            "",
            "Which part makes the difference: timm's recipe (its loop, optimizer, scheduler, loss, eval transform) "
            f"with one skulab part swapped in, seed {out['seeds'][0]} only:",
            "",
            "| run | top-1, " + split + " | val top-1 (best epoch) | val top-1 per epoch |",
            "|---|---:|---:|---|",
            f"| timm's recipe as above (seed {out['seeds'][0]}) | {timm_['eval_top1_by_seed'][str(out['seeds'][0])]:.3f} | {timm_['first_val_top1']:.3f} (epoch {timm_['best_epoch']}) | "
            + ", ".join(f"{row['val_top1']:.3f}" for row in timm_["history"]) + " |",
        ]
        labels = {
            "timm_skulab_head": "skulab's head (Recognizer: embedding -> BNNeck -> classifier) instead of timm's classifier",
            "timm_skulab_augmentation": "skulab's `augment: timm` (v2 on uint8 tensors) instead of timm's PIL transform",
        }
        for name, p in out["ablations"].items():
            lines.append(
                f"| {labels[name]} | {p['eval_top1']:.3f} | {p['val_top1']:.3f} (epoch {p['best_epoch']}) | "
                + ", ".join(f"{row['val_top1']:.3f}" for row in p["history"]) + " |"
            )
    profiles = out["augmentation_ms_per_sample_by_torch_threads"]
    threads = list(profiles)
    lines += [
        "",
        "The data path alone: each train augmentation once over 400 train crops (median of 2 rounds), ms per sample, "
        "by torch threads:",
        "",
        "| augmentation | " + " | ".join(f"{t} thread{'s' if t != '1' else ''}" for t in threads) + " |",
        "|---|" + "---:|" * len(threads),
    ]
    for name in profiles[threads[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{profiles[t][name]:.2f}" for t in threads) + " |")
    if out.get("note"):
        lines += ["", out["note"]]
    lines += [
        "",
        "skulab's `head: linear` is timm's classifier on pooled features; its default `head: bnneck` (embedding -> BNNeck -> "
        "classifier) serves metric losses and mixes. Evaluation transforms differ (timm: resize to image_size / 0.875 and centre crop; skulab: resize). "
        "Timings on a shared machine vary from run to run; the CPU seconds show how much of an epoch was spent "
        "computing rather than waiting.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--crops", default=str(REPO / "data/crops"), help="the crop stage's output folder")
    parser.add_argument("--epochs", type=int, help="shorten both runs (default: recognizer.base.epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train both paths once per seed; accuracies are means over them")
    parser.add_argument("--head", choices=("linear", "bnneck"), default="linear", help="the skulab cell's head (default: %(default)s, timm's)")
    parser.add_argument("--rounds", type=int, default=1, help="train both paths this many times per seed, in alternating order, for the epoch times")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's seed
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both runs (0: torch's default, one per core)")
    parser.add_argument("--note", default="", help="a sentence for the report (where the crops came from, the machine's load)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/vs_timm"), help="output path stem")
    parser.add_argument("--ablations", action="store_true", help="also train timm's recipe with skulab's head, then with skulab's augmentation")
    parser.add_argument("--child", choices=(*PATHS, *ABLATIONS, "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    started = time.perf_counter()
    crops = Path(args.crops).resolve()
    cfg = _config(Path(args.params), args.epochs, args.head)
    results, seconds = {what: [] for what in PATHS}, {}
    turn = 0
    for seed in args.seeds:
        for round_ in range(args.rounds):  # alternating order: timm, skulab, skulab, timm, ...
            for what in PATHS if turn % 2 == 0 else PATHS[::-1]:
                key = f"{what}_seed_{seed}_round_{round_ + 1}"
                result, seconds[key] = _spawn(what, cfg, crops, seed, args.threads)
                results[what].append({**result, "seed": seed})
                print(f"{key}: {seconds[key]:.0f} s, top-1 {result['eval_top1']:.3f}", flush=True)
            turn += 1
    ablations = {}
    for what in ABLATIONS if args.ablations else ():
        result, seconds[what] = _spawn(what, cfg, crops, args.seeds[0], args.threads)
        ablations[what] = _summary([result])
        print(f"{what}: {seconds[what]:.0f} s", flush=True)
    profiles = {}  # the data path at the runs' threads and at torch's default (where it differs)
    for threads in dict.fromkeys((args.threads, 0)):
        profile, seconds[f"profile_threads_{threads}"] = _spawn("profile", cfg, crops, args.seeds[0], threads)
        profiles[str(profile.pop("torch_threads"))] = profile
    timm_, sku = _summary(results["timm"]), _summary(results["skulab"])
    ratio = sku["train_epoch_seconds"] / timm_["train_epoch_seconds"]
    eval_split = timm_["eval_split"]
    out = {
        "date": date.today().isoformat(),
        "command": "nice -n %d .venv/bin/python bench/vs_timm.py" % os.nice(0) + (f" --epochs {args.epochs}" if args.epochs else "")
        + (f" --threads {args.threads}" if args.threads else "") + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0] else "") + (f" --head {args.head}" if args.head != "linear" else "")
        + (" --ablations" if args.ablations else "")
        + (f" --crops {args.crops}" if Path(args.crops).resolve() != (REPO / "data/crops").resolve() else ""),
        "machine": {"cores": os.cpu_count(), "cpu": _cpu_name(), "nice": os.nice(0), "load_average_1min_at_end": os.getloadavg()[0],
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset")},
        "crops": str(args.crops),
        "train_crops": len(load_crops(crops, "train").labels),
        "eval_crops": len(load_crops(crops, eval_split).products().labels),
        "config": cfg.model_dump(mode="json"),
        "paths": {"timm": timm_, "skulab": sku},
        "ablations": ablations,
        "augmentation_ms_per_sample_by_torch_threads": profiles,
        "goal": {
            "accuracy_met": sku["eval_top1"] >= timm_["eval_top1"],
            "epoch_time_ratio": ratio,
            "epoch_cpu_time_ratio": (sku["train_epoch_cpu_seconds"] / timm_["train_epoch_cpu_seconds"]) if sku["train_epoch_cpu_seconds"] else None,
            "epoch_time_met": ratio <= 1.1,
        },
        "seeds": args.seeds,
        "rounds": args.rounds,
        "note": args.note,
        "process_seconds": seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    stem = Path(args.out)
    write_json_atomic(stem.with_suffix(".json"), out)
    write_text_atomic(stem.with_suffix(".md"), _markdown(out))
    print(_markdown(out))


if __name__ == "__main__":
    main()
