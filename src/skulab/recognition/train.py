"""Train one recognizer cell (variant x seed): select on val, report on test, resume from last.pt.

Only an interrupted run is resumed, and only when its fingerprint (config, seed, crops, code)
matches, so a stale checkpoint from an edited variant is never continued. RNG states are checkpointed too, so an
interrupted and resumed run ends with the same metrics as an uninterrupted one.

With world_size > 1 (one process per rank, started by torchrun; see skulab.distributed) the model
is wrapped in DistributedDataParallel, each rank trains on its slice of every global batch of
batch_size (sampler.GlobalBatchShards), and rank 0 alone evaluates, logs to the cell's run and
writes the checkpoints and metrics; last.pt then also carries every rank's RNG states. world_size 1
runs exactly the single-process code path.

The parts: `train_one_epoch` (the epoch loop), `CellCheckpoints` (last.pt / best.pt, fingerprint,
resume, RNG states; skulab.checkpoint), `CellReport` (the metrics files and what is logged to the
run, through a skulab.tracking.RunLogger), and `CellTrainer`, which runs them.
"""

import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from skulab import checkpoint as checkpoints
from skulab.distributed import SINGLE, Ranks
from skulab.errors import SkulabError
from skulab.layout import GT_TEST
from skulab.io import hash_files, read_json, write_csv_atomic, write_json_atomic
from skulab.params import RecognizerConfig
from skulab.recognition import evaluation
from skulab.recognition.augment import eval_transform, train_transform
from skulab.recognition.data import CropSet, TransformedCrops, load_crops
from skulab.recognition.head import Recognizer, build_recognizer
from skulab.recognition.losses import WeightedLoss, uses_classifier, uses_metric_loss
from skulab.recognition.optimizers import create_optimizer
from skulab.recognition.sampler import DistributedPKSampler, DistributedShuffleSampler, pk_sampler
from skulab.recognition.schedules import create_schedule
from skulab.plots import plot_history
from skulab.tracking import NullLogger, RunLogger

EVAL_SPLITS = ("val", "test")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_rank(seed: int, rank: int) -> None:
    """Each rank of a multi-process cell its own global RNG streams (augmentations), derived from (seed, rank)."""
    seed_everything(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SkulabError("recognizer device is 'cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(name)



def train_one_epoch(model, loader, optimizer, scheduler, criterion, ranks: Ranks = SINGLE, has_classifier: bool = True) -> dict:
    """One pass over `loader` (a step of optimizer and scheduler per batch); the epoch's train_* figures.

    With ranks enabled the figures are the global batches': sums over the ranks.
    """
    model.train()
    device = next(model.parameters()).device
    total, terms, correct, seen = 0.0, {}, 0, 0
    for images, labels in tqdm(loader, desc="train", unit="batch", leave=False, disable=not ranks.main):
        images, labels = images.to(device), labels.to(device)
        out = model(images)
        loss, parts = criterion(out, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(labels)
        for name, value in parts.items():
            terms[name] = terms.get(name, 0.0) + value * len(labels)
        correct += (out.logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    if ranks.enabled:
        names = sorted(terms)
        total, correct, seen, *sums = ranks.all_sum([total, correct, seen, *(terms[name] for name in names)])
        terms = dict(zip(names, sums))
    row = {"train_loss": total / seen, **{f"train_loss_{k}": v / seen for k, v in terms.items()}}
    if has_classifier:
        row["train_acc"] = correct / seen
    return row


class CellCheckpoints:
    """A cell's last.pt (everything resuming needs) and best.pt (the selected weights), and its fingerprint.

    Only an interrupted run of this exact cell (same fingerprint: config, seed, crops, code) is resumed.
    """

    def __init__(self, model_dir: Path, fingerprint: str, epochs: int):
        self.model_dir, self.fingerprint, self.epochs = model_dir, fingerprint, epochs

    @property
    def last_path(self) -> Path:
        return self.model_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.model_dir / "best.pt"

    def resumable(self) -> dict | None:
        """last.pt of an interrupted run with this fingerprint, else None (a finished run is never resumed)."""
        if not self.last_path.is_file():
            return None
        checkpoint = checkpoints.load(self.last_path)
        if checkpoint.get("fingerprint") != self.fingerprint or checkpoint["epoch"] >= self.epochs:
            return None
        return checkpoint

    def restore(self, checkpoint: dict, model, optimizer, scheduler, generator: torch.Generator, ranks: Ranks) -> tuple[int, list[dict], dict]:
        """Load `checkpoint` into the training objects and this rank's RNG states; (start epoch, history, best)."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        checkpoints.set_rng_state(checkpoint["rank_rng"][ranks.rank] if ranks.enabled else checkpoint["rng"], generator)
        return checkpoint["epoch"], checkpoint["history"], checkpoint["best"]

    def save_best(self, model, epoch: int, config: RecognizerConfig, class_names: list[str]) -> None:
        checkpoints.save({"model": model.state_dict(), "epoch": epoch, "config": config.model_dump(), "class_names": class_names}, self.best_path)

    def save_last(self, model, optimizer, scheduler, epoch: int, history: list[dict], best: dict, generator: torch.Generator, rank_rng: dict, run_id: str) -> None:
        checkpoints.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best": best,
                "rng": checkpoints.rng_state(generator),
                **rank_rng,
                "fingerprint": self.fingerprint,
                "run_id": run_id,
            },
            self.last_path,
        )

    def load_best(self, model) -> None:
        model.load_state_dict(checkpoints.load(self.best_path)["model"])


class CellReport:
    """What a finished cell leaves in metrics/ (final.json, per_class.json, history.csv, curves.png,
    test_predictions.csv) and logs to its run: per-epoch rows, test metrics, those files and the checkpoints."""

    FILES = ("final.json", "per_class.json", "history.csv", "curves.png", "test_predictions.csv")

    def __init__(self, metrics_dir: Path, logger: RunLogger):
        self.metrics_dir, self.logger = metrics_dir, logger

    def log_epoch(self, row: dict) -> None:
        self.logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    def write_history(self, history: list[dict]) -> None:
        write_csv_atomic(self.metrics_dir / "history.csv", history)

    def write_predictions(self, test: CropSet, outputs: dict[str, torch.Tensor]) -> None:
        """Every test crop's answer (background crops too), for the report's shelf metrics and confusions."""
        columns = zip(
            test.crops, test.labels.tolist(), outputs["pred"].tolist(), outputs["confidence"].tolist(),
            outputs["proto_pred"].tolist(), outputs["proto_similarity"].tolist(),
        )
        rows = [
            {"crop": crop, "label": label, "pred": pred, "confidence": round(confidence, 6), "proto_pred": proto_pred, "proto_similarity": round(similarity, 6)}
            for crop, label, pred, confidence, proto_pred, similarity in columns
        ]
        write_csv_atomic(self.metrics_dir / "test_predictions.csv", rows)

    def finish(self, final: dict, per_class: dict, history: list[dict], saved: CellCheckpoints) -> None:
        """The test metrics and best epoch to the run, final.json, per_class.json, curves.png, then the artifacts."""
        self.logger.log_metrics({k: v for k, v in final.items() if k.startswith("test_")})
        self.logger.log_metric("best_epoch", final["best_epoch"])
        write_json_atomic(self.metrics_dir / "final.json", final)
        write_json_atomic(self.metrics_dir / "per_class.json", {"test_accuracy": per_class})
        plot_history(history, self.metrics_dir / "curves.png", title=self.metrics_dir.name)
        for name in self.FILES:
            self.logger.log_artifact(self.metrics_dir / name, artifact_path="metrics")
        self.logger.log_artifact(saved.best_path, artifact_path="checkpoints")
        self.logger.log_artifact(saved.last_path, artifact_path="checkpoints")


class CellTrainer:
    def __init__(self, config: RecognizerConfig, seed: int, crops: Path, model_dir: Path, metrics_dir: Path, ranks: Ranks = SINGLE):
        self.config, self.seed, self.ranks = config, seed, ranks
        self.crops, self.model_dir, self.metrics_dir = crops, model_dir, metrics_dir
        # The crops' bytes, not just the manifest: padding or a lighting change keeps every box.
        crops_hash = hash_files(crops) if crops.is_dir() else "none"
        self.fingerprint = checkpoints.fingerprint(config=config, seed=seed, crops=crops_hash, code=checkpoints.code_hash(Path(__file__).parent))
        self.checkpoints = CellCheckpoints(model_dir, self.fingerprint, config.epochs)
        self.has_classifier = uses_classifier(config.loss)

    @property
    def last_path(self) -> Path:
        return self.checkpoints.last_path

    @property
    def best_path(self) -> Path:
        return self.checkpoints.best_path

    def resumable(self) -> dict | None:
        """The last checkpoint of an interrupted run of this exact cell, else None (start over).

        A finished run is never resumed: DVC only reruns a finished cell when something it
        depends on changed (or on --force), and then the cell must train again.
        """
        return self.checkpoints.resumable()

    def _loader(self, train: CropSet, generator: torch.Generator) -> DataLoader:
        cfg = self.config
        dataset = TransformedCrops(train, train_transform(cfg.augment, cfg.image_size))
        if self.ranks.enabled:  # this rank's slice of each global batch, drawn from (seed, epoch)
            rank, world = self.ranks.rank, self.ranks.world_size
            if uses_metric_loss(cfg.loss):
                shards = DistributedPKSampler(train.labels, train.class_names, cfg.batch_size, cfg.sampler_k, rank, world, self.seed)
            else:
                shards = DistributedShuffleSampler(len(train.labels), cfg.batch_size, rank, world, self.seed)
            return DataLoader(dataset, batch_size=shards.per_rank, sampler=shards, drop_last=True)
        if uses_metric_loss(cfg.loss):
            sampler = pk_sampler(train.labels, train.class_names, cfg.batch_size, cfg.sampler_k)
            return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator)

    def _evaluate(self, model, train: CropSet, query: CropSet) -> tuple[dict, dict[str, torch.Tensor]]:
        """Metrics over the query crops that show a product, and every query crop's prediction."""
        transform = eval_transform(self.config.image_size, self.config.crop_pct)
        gallery, _ = evaluation.embed(model, train.images, transform, self.has_classifier)
        features, logits = evaluation.embed(model, query.images, transform, self.has_classifier)
        num_classes = len(train.class_names)
        outputs = evaluation.predict(gallery, train.labels, features, logits, num_classes, self.has_classifier)
        known = query.labels >= 0
        metrics = (
            evaluation.score(gallery, train.labels, features[known], logits[known], query.labels[known], num_classes, self.has_classifier)
            if known.any()
            else {}
        )
        return metrics, outputs

    def selection_metric(self) -> str:
        return "val_top1" if self.has_classifier else "val_proto_acc"

    def _parallel(self, model: Recognizer, device: torch.device):
        """The module the training steps call: DDP over the ranks, or the model itself."""
        if not self.ranks.enabled:
            return model
        # A metric-only loss leaves the classifier out of the loss while its logits are still an
        # output: static_graph learns the unused parameters from the first backward pass.
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, static_graph=not self.has_classifier)

    def _load_splits(self) -> dict[str, CropSet]:
        stats = read_json(self.crops / "stats.json")
        if self.config.image_size > stats["stored_size"]:
            raise SkulabError(f"{self.crops}: crops are stored at {stats['stored_size']} px, below image_size {self.config.image_size}; raise crop.stored_size")
        splits = {split: load_crops(self.crops, split) for split in ("train", *EVAL_SPLITS)}
        if stats.get(GT_TEST, {}).get("crops"):  # no ground-truth test crops when every test box is below min_box_size
            splits[GT_TEST] = load_crops(self.crops, GT_TEST)
        return splits

    def fit(self, run_id: str, checkpoint: dict | None = None, stop_after_epochs: int | None = None, logger: RunLogger | None = None) -> dict | None:
        """Train (or resume `checkpoint`) to the configured epochs; return final metrics, or None if stopped early.

        Per-epoch rows, test metrics and the cell's files go to `logger` (the cell's run; default: none).
        On a rank other than 0 of a multi-process cell: train, and return None (rank 0 has the metrics).
        """
        cfg, ranks = self.config, self.ranks
        report = CellReport(self.metrics_dir, logger or NullLogger())
        seed_everything(self.seed)
        splits = self._load_splits()
        train = splits["train"]
        model = build_recognizer(cfg, len(train.class_names))
        device = resolve_device(cfg.device)
        if ranks.enabled and device.type == "cuda":
            device = torch.device("cuda", ranks.local_rank)
        model.to(device)
        generator = torch.Generator().manual_seed(self.seed)
        loader = self._loader(train, generator)
        optimizer = create_optimizer(model, cfg)
        scheduler = create_schedule(optimizer, cfg, len(loader))
        criterion = WeightedLoss(cfg)
        net = self._parallel(model, device)  # DDP copies rank 0's initial weights to every rank
        if ranks.enabled:
            seed_rank(self.seed, ranks.rank)
        start_epoch, history, best = 0, [], {"value": -1.0, "epoch": -1}
        if checkpoint is not None:
            start_epoch, history, best = self.checkpoints.restore(checkpoint, model, optimizer, scheduler, generator, ranks)
            if ranks.main:
                tqdm.write(f"resuming from {self.last_path} at epoch {start_epoch}")

        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        select = self.selection_metric()
        epochs = tqdm(range(start_epoch, cfg.epochs), desc="epochs", unit="epoch", initial=start_epoch, total=cfg.epochs, disable=not ranks.main)
        for epoch in epochs:
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            if ranks.enabled:
                loader.sampler.set_epoch(epoch)
            row = {"epoch": epoch + 1, "lr": lr, **self._train_epoch(net, loader, optimizer, scheduler, criterion)}
            if ranks.main:
                val_metrics, _ = self._evaluate(model, train, splits["val"])
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                row["epoch_seconds"] = time.perf_counter() - started
                history.append(row)
                report.log_epoch(row)
                epochs.set_postfix(loss=f"{row['train_loss']:.3f}", **{select: f"{row[select]:.3f}"})
                if row[select] > best["value"]:
                    best = {"value": row[select], "epoch": epoch + 1}
                    self.checkpoints.save_best(model, epoch + 1, cfg, train.class_names)
            rank_rng = {"rank_rng": ranks.gather(checkpoints.rng_state(generator))} if ranks.enabled else {}
            if ranks.main:
                self.checkpoints.save_last(model, optimizer, scheduler, epoch + 1, history, best, generator, rank_rng, run_id)
                report.write_history(history)
            if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs and epoch + 1 < cfg.epochs:
                return None
        return self._finish(model, splits, history, best, run_id, report) if ranks.main else None

    def _train_epoch(self, model, loader, optimizer, scheduler, criterion) -> dict:
        """This cell's `train_one_epoch` (a method, so a benchmark can time the training pass alone)."""
        return train_one_epoch(model, loader, optimizer, scheduler, criterion, self.ranks, self.has_classifier)

    def _finish(self, model, splits, history, best, run_id, report: CellReport) -> dict:
        self.checkpoints.load_best(model)
        # Test crops may come from a detector: score recognition on those showing a product, and
        # the whole chain over every crop and every ground-truth box (stats.json of the crop stage).
        test = splits["test"]
        test_metrics, outputs = self._evaluate(model, splits["train"], test)
        known = test.labels >= 0
        if not known.any():
            tqdm.write("warning: no test crop shows a product (the detector matched none); end-to-end scores are 0")
        gt_boxes = read_json(self.crops / "stats.json")["test"]["gt_boxes"]
        test_metrics.update(evaluation.end_to_end(outputs["pred"][known], test.labels[known], len(test.labels), gt_boxes))
        if GT_TEST in splits:  # the same model on ground-truth boxes: what detection costs recognition
            gt_metrics, _ = self._evaluate(model, splits["train"], splits[GT_TEST])
            test_metrics.update({f"gt_{k}": v for k, v in gt_metrics.items()})
        report.write_predictions(test, outputs)
        best_row = history[best["epoch"] - 1]
        final = {
            "best_epoch": best["epoch"],
            "run_id": run_id,
            **{f"test_{k}": v for k, v in test_metrics.items()},
            **{k: v for k, v in best_row.items() if k.startswith("val_")},
            "train_seconds": sum(row["epoch_seconds"] for row in history),
        }
        per_class = evaluation.per_class_accuracy(outputs["pred"][known], test.labels[known], test.class_names)
        report.finish(final, per_class, history, self.checkpoints)
        return final
