"""Train one detector cell with mmengine's Runner: val mAP every epoch, test mAP and detections at the end.

The stage owns the logging (a hook writes each epoch to the stage's own run, through the
skulab.tracking.RunLogger the cell module hands over, and to metrics/detector/<name>/history.csv)
and the resume decision: an interrupted run continues from mmengine's last checkpoint only when
its fingerprint (config, data, code; skulab.checkpoint) matches; anything else starts over in an
emptied work dir. The stage's hooks each do one job (cell_hooks): progress bar, RNG states in
checkpoints, history rows, logging, resume-time validation, stopping after N epochs.

The terminal gets one line naming mmengine's log file, a progress bar and a metrics line per epoch,
and the test scores; mmengine's environment dump, resolved config, hook table and per-iteration
lines, and pycocotools' prints, go to the log file only (models/detector/<name>/<timestamp>/).
"""

import contextlib
import copy
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dist import barrier, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import Runner, TestLoop
from tqdm import tqdm

from skulab import checkpoint as checkpoints
from skulab.data.coco import AGNOSTIC_CLASS, detector_annotations  # noqa: F401  (AGNOSTIC_CLASS: its former home)
from skulab.detection.compat import trust_checkpoints_under
from skulab.detection import metric  # noqa: F401  (registers ZeroIfEmptyCocoMetric)
from skulab.detection import SELECT_METRIC
from skulab.detection.config import build_config
from skulab.errors import SkulabError
from skulab.io import read_json, write_csv_atomic, write_json_atomic, write_text_atomic
from skulab.params import DetectorConfig
from skulab.plots import DETECTOR_SCORES, plot_history
from skulab.tracking import NullLogger, RunLogger

NOT_ON_CONSOLE = (
    "will be deprecated", "is the alias of",  # mmengine's notices about its own API, every run
    "The testing results of the whole dataset is empty",  # an epoch without detections: ZeroIfEmptyCocoMetric scores it 0
)


class _ConsoleFilter(logging.Filter):
    """Known, handled messages stay in the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in NOT_ON_CONSOLE)


CONSOLE_FILTER = _ConsoleFilter()


class QuietRunner(Runner):
    """mmengine's Runner whose console shows warnings and errors only; its log file still gets everything.

    mmengine's MMLogger has one log_level for its console and file handlers, and logs the environment,
    the whole config and the hook table from Runner.__init__ (500+ lines per cell); lowering the
    console handler as the logger is built is the one place that catches them.
    """

    def build_logger(self, log_level="INFO", log_file=None, **kwargs):
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
                handler.addFilter(CONSOLE_FILTER)
        return logger


def runner_log_file(runner: Runner) -> Path:
    """The text log mmengine writes for this runner (work_dir/<timestamp>/<timestamp>.log)."""
    for handler in runner.logger.handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return Path(runner.log_dir) / f"{runner.timestamp}.log"


@contextlib.contextmanager
def prints_to(path: Path):
    """print() output (pycocotools' progress and tables, mmengine's checkpoint loader) appended to `path`."""
    with open(path, "a", buffering=1) as stream, contextlib.redirect_stdout(stream):
        yield


def shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def metric_name(key: str) -> str:
    """mmdet's 'coco/bbox_AR@100' -> 'bbox_AR_100' (MLflow metric names allow no '@')."""
    return key.removeprefix("coco/").replace("@", "_")


class StopAfterEpochs(Exception):
    """Raised by the tracking hook to interrupt training on purpose (--stop-after-epochs)."""


class RngCheckpointHook(Hook):
    """The global RNG states (Python, NumPy, torch; mmengine keeps only the seed) in every checkpoint.

    A resumed run then draws the same augmentations as an uninterrupted one. Validation runs on a
    copy of them (its DataLoader seeds an iterator from torch's RNG), so the training stream, and
    the state saved, is the same whether a checkpoint was written before or after its epoch's
    validation.
    """

    priority = "LOWEST"  # after CheckpointHook: best-checkpoint saves in after_val_epoch carry the training states

    def __init__(self):
        self.training_rng: dict | None = None  # the training RNG states, set while validating

    def before_val_epoch(self, runner) -> None:
        self.training_rng = checkpoints.global_rng_state()

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        checkpoints.set_global_rng_state(self.training_rng)
        self.training_rng = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["skulab_rng"] = self.training_rng if self.training_rng is not None else checkpoints.global_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "skulab_rng" in checkpoint:
            checkpoints.set_global_rng_state(checkpoint["skulab_rng"])


class ProgressHook(Hook):
    """One progress bar per epoch (stderr, rank 0): its training and validation iterations."""

    priority = "LOWEST"

    def __init__(self, cell: "DetectorCell"):
        self.cell = cell
        self.bar: tqdm | None = None
        self.loss, self.iters = 0.0, 0  # the epoch's running train loss, shown on the bar

    def _open_bar(self, epoch: int, max_epochs: int, total: int) -> None:
        self.close_bar()
        desc = f"{self.cell.name} epoch {epoch}/{max_epochs}"
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True, disable=not is_main_process())

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def before_train_epoch(self, runner) -> None:
        self.loss, self.iters = 0.0, 0
        self._open_bar(runner.epoch + 1, runner.max_epochs, len(runner.train_dataloader) + len(runner.val_dataloader))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.loss += float(torch.as_tensor((outputs or {}).get("loss", 0.0)).detach())
        self.iters += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss / self.iters:.3f}", refresh=False)
            self.bar.update()

    def before_val_epoch(self, runner) -> None:
        if self.bar is None:  # validating a resumed epoch: no training bar to continue
            self._open_bar(runner.epoch, runner.max_epochs, len(runner.val_dataloader))

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.bar is not None:
            self.bar.update()

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        self.close_bar()


class EpochHistoryHook(Hook):
    """Each epoch's history row (lr, train losses, val metrics, time) and its metrics line on the console.

    Every checkpoint carries the training half of its epoch's row (losses, time), so an epoch whose
    validation was interrupted can be validated on resume (ResumeValidationHook).
    """

    priority = "LOWEST"

    def __init__(self, cell: "DetectorCell", history: list[dict], console=None):
        self.cell, self.history = cell, history
        self.console = console or sys.stdout  # the terminal, while print() goes to the log file
        self.sums, self.iters, self.started, self.epoch = {}, 0, time.perf_counter(), 0
        self.trained: dict | None = None  # the training half of the current epoch's row, once it ends

    def _report(self, row: dict, max_epochs: int) -> None:
        scores = "  ".join(f"{label} {row[key]:.3f}" for label, key in (("val mAP", SELECT_METRIC), ("mAP50", "val_bbox_mAP_50"), ("AR@100", "val_bbox_AR_100")) if key in row)
        loss = f"loss {row['train_loss']:.3f}  " if "train_loss" in row else ""
        tqdm.write(f"{self.cell.name} epoch {row['epoch']}/{max_epochs}: {loss}{scores}  ({row['epoch_seconds']:.0f} s)", file=self.console)

    def before_train_epoch(self, runner) -> None:
        self.sums, self.iters, self.started, self.trained = {}, 0, time.perf_counter(), None
        self.epoch = runner.epoch + 1  # runner.epoch counts finished epochs

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for key, value in (outputs or {}).items():
            self.sums[key] = self.sums.get(key, 0.0) + float(torch.as_tensor(value).detach())
        self.iters += 1

    def end_training(self) -> dict:
        """The epoch's training half of its row, fixed when first asked for after training: by its checkpoint."""
        if self.trained is None:
            seconds = time.perf_counter() - self.started
            losses = {f"train_{key}": value / max(self.iters, 1) for key, value in self.sums.items()}
            self.trained = {"epoch": self.epoch, "losses": losses, "seconds": seconds, "iters": self.iters}
        return self.trained

    def after_train_epoch(self, runner) -> None:
        self.end_training()

    def unvalidated(self, epoch: int) -> bool:
        """Whether `epoch` was trained (its training half came with the checkpoint) but has no history row."""
        return self.trained is not None and self.trained["epoch"] == epoch and not any(row["epoch"] == epoch for row in self.history)

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        trained = self.trained
        if trained is None or trained["epoch"] != runner.epoch:
            raise SkulabError(f"{self.cell.model_dir}: validating epoch {runner.epoch} without its training record")
        row = {
            "epoch": runner.epoch,
            "lr": runner.optim_wrapper.get_lr()["lr"][0],
            **trained["losses"],
            **{f"val_{metric_name(key)}": float(value) for key, value in (metrics or {}).items()},
            "epoch_seconds": trained["seconds"],
            "seconds_per_iter": trained["seconds"] / max(trained["iters"], 1),
        }
        self.history.append(row)
        if is_main_process():  # world_size > 1: rank 0 alone reports
            self._report(row, runner.max_epochs)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["skulab_trained"] = self.end_training()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.trained = checkpoint.get("skulab_trained")


class RunLogHook(Hook):
    """Each epoch's history row to the cell's run (step: the epoch), history.csv and the cell's state file."""

    priority = "LOWEST"

    def __init__(self, cell: "DetectorCell", history: list[dict], logger: RunLogger):
        self.cell, self.history, self.logger = cell, history, logger

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if is_main_process():  # world_size > 1: rank 0 alone logs and writes
            row = self.history[-1]
            self.logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=runner.epoch)
            write_csv_atomic(self.cell.metrics_dir / "history.csv", self.history)
            self.cell.save_state(finished=False, history=self.history)


class ResumeValidationHook(Hook):
    """On resume, validates the epoch resumed from when its validation was interrupted.

    mmengine writes `last_checkpoint` when training ends, before validation, and resuming would
    otherwise start the next epoch with this one never validated (no history row, never a
    candidate for the best checkpoint).
    """

    priority = "LOWEST"  # registered after mmengine's hooks: every other before_train has run, CheckpointHook's included

    def __init__(self, epochs: EpochHistoryHook):
        self.epochs = epochs

    def before_train(self, runner) -> None:
        # Resumed from the checkpoint of an epoch that has no history row: validate it now, as the
        # uninterrupted run did before the next epoch.
        if not self.epochs.unvalidated(runner.epoch):
            return
        for hook in runner.hooks:
            # mmengine re-saves the epoch's checkpoint when validation finds a new best (so the
            # checkpoint names it), but only once it has saved one in this process; point it at
            # the checkpoint resumed from.
            if isinstance(hook, CheckpointHook) and hook.last_ckpt is None:
                hook.last_ckpt = runner.message_hub.get_info("last_ckpt")
        runner.val_loop.run()


class StopAfterEpochsHook(Hook):
    """--stop-after-epochs: interrupts training on purpose after that many epochs of this process, once validated."""

    priority = "LOWEST"  # registered last: after every other hook has handled the epoch's validation

    def __init__(self, stop_after_epochs: int | None):
        self.stop_after_epochs, self.epochs_run = stop_after_epochs, 0

    def after_train_epoch(self, runner) -> None:
        self.epochs_run += 1

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if self.stop_after_epochs is not None and self.epochs_run >= self.stop_after_epochs and runner.epoch < runner.max_epochs:
            raise StopAfterEpochs


def cell_hooks(cell: "DetectorCell", history: list[dict], stop_after_epochs: int | None, logger: RunLogger, console=None) -> tuple[ProgressHook, list[Hook]]:
    """The stage's hooks, each with one job, in the order to register them.

    All are LOWEST, so they run after mmengine's (CheckpointHook has saved the epoch's checkpoints)
    and in this order; after_val_epoch: close the bar, restore the training RNG states, add the
    epoch's history row and print it, log it and write history.csv and the state file, then stop
    if asked to.
    """
    progress = ProgressHook(cell)
    epochs = EpochHistoryHook(cell, history, console)
    hooks = [progress, RngCheckpointHook(), epochs, RunLogHook(cell, history, logger), ResumeValidationHook(epochs), StopAfterEpochsHook(stop_after_epochs)]
    return progress, hooks


class DetectorCell:
    """The files of one detector cell: work dir (mmengine's checkpoints), metrics, test detections."""

    def __init__(self, name: str, config: DetectorConfig, repo: Path, prepared: Path, model_dir: Path, metrics_dir: Path, detections_dir: Path, dataset_hash: str):
        self.name, self.config, self.repo, self.prepared = name, config, repo, prepared
        self.model_dir, self.metrics_dir, self.detections_dir = model_dir, metrics_dir, detections_dir
        # This package's code and the detector's config file: a checkpoint from other code is not resumed.
        code = checkpoints.code_hash(Path(__file__).parent, {"config": (repo / config.config).read_text()})
        fingerprint = {"config": config, "dataset": dataset_hash, "code": code}
        if config.pretrained not in ("none", "download"):  # the same path with other weights is another cell
            fingerprint["pretrained"] = checkpoints.file_hash(repo / config.pretrained)
        self.fingerprint = checkpoints.fingerprint(**fingerprint)

    @property
    def state_path(self) -> Path:
        return self.model_dir / "state.json"

    @property
    def detections_file(self) -> Path:
        return self.detections_dir / "test.bbox.json"

    @property
    def val_detections_file(self) -> Path:
        """The val split's detections from the same checkpoint: what crop.score_threshold: auto is chosen on."""
        return self.detections_dir / "val.bbox.json"

    def resumable(self) -> dict | None:
        """The state of an interrupted run of this exact cell with a checkpoint to resume, else None."""
        if not self.state_path.is_file():
            return None
        state = read_json(self.state_path)
        if state.get("fingerprint") != self.fingerprint or state.get("finished") or not (self.model_dir / "last_checkpoint").is_file():
            return None
        return state

    def save_state(self, finished: bool, history: list[dict]) -> None:
        if not is_main_process():  # world_size > 1: rank 0 owns the cell's files
            return
        # JSON sorts each row's keys: the column order is kept beside, so a resumed run's history.csv (and
        # its curves.png) is the uninterrupted run's.
        columns = list(history[0]) if history else []
        write_json_atomic(self.state_path, {"fingerprint": self.fingerprint, "run_id": self.run_id, "finished": finished, "history": history, "columns": columns})

    def prepare_work_dir(self, resume: bool) -> Config:
        if not resume and self.model_dir.exists() and is_main_process():  # world_size > 1: the others wait (cell.py)
            shutil.rmtree(self.model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.detections_dir.mkdir(parents=True, exist_ok=True)
        annotations, classes = detector_annotations(self.prepared, self.model_dir / "annotations", self.config.class_aware)
        cfg = build_config(self.config, self.repo, self.prepared, annotations, classes, self.model_dir, self.detections_dir / "test")
        cfg.resume = resume
        write_text_atomic(self.model_dir / "config.py", cfg.pretty_text)
        return cfg

    def fit(self, cfg, run_id: str, state: dict | None, stop_after_epochs: int | None = None, logger: RunLogger | None = None) -> dict | None:
        """Train (or resume) to the configured epochs; return the final metrics, or None if stopped early.

        Per-epoch rows, test metrics and the cell's files go to `logger` (the cell's run; default: none).
        """
        self.run_id = run_id
        logger = logger or NullLogger()
        history = [{key: row[key] for key in state.get("columns") or row} for row in state["history"]] if state else []
        self.save_state(finished=False, history=history)
        trust_checkpoints_under(self.model_dir)
        main = is_main_process()  # world_size > 1: the other ranks print nothing
        console = sys.stdout if main else open(os.devnull, "w")  # before print() is sent to the log file
        try:
            runner = QuietRunner.from_cfg(cfg)
        except KeyError as exc:  # mmengine registries: an unknown `type` in the config
            raise SkulabError(f"{self.config.config}: {exc.args[0] if exc.args else exc}") from None
        log = runner_log_file(runner) if main else Path(os.devnull)
        resumed = f", resuming after epoch {len(history)}" if state else ""
        print(f"train_detector@{self.name}: mmengine's log (environment, config, every iteration) in {shown(log)}{resumed}", file=console, flush=True)
        progress, hooks = cell_hooks(self, history, stop_after_epochs, logger, console)
        for hook in hooks:
            runner.register_hook(hook)
        try:
            with prints_to(log):
                runner.train()
                final = self._finish(runner, history, logger)
        except StopAfterEpochs:
            return None
        finally:
            progress.close_bar()
        scores = "  ".join(f"{label} {final[key]:.3f}" for label, key in (("test mAP", "test_bbox_mAP"), ("mAP50", "test_bbox_mAP_50"), ("AR@100", "test_bbox_AR_100")) if key in final)
        print(f"{self.name} best epoch {final['best_epoch']}: {scores}; detections in {shown(self.detections_dir)}", file=console, flush=True)
        return final

    def _detect_val(self, runner) -> dict:
        """Write the val split's detections (val.bbox.json, COCO results as test.bbox.json) from the loaded checkpoint.

        A TestLoop over the val loader with the val metric writing its results file: the training's
        ValLoop would call the validation hooks (history rows, best-checkpoint bookkeeping) again.
        """
        evaluator = copy.deepcopy(runner.cfg.val_evaluator).to_dict()
        evaluator["outfile_prefix"] = str((self.detections_dir / "val").resolve())
        runner.logger.info(f"Detections on val from the loaded checkpoint -> {self.val_detections_file}")
        return TestLoop(runner, runner.val_dataloader, evaluator).run()

    def _best(self, runner, history: list[dict]) -> tuple[Path, dict]:
        """mmengine's best checkpoint and its epoch's history row, after checking every epoch has one row."""
        epochs = [row["epoch"] for row in history]
        if epochs != list(range(1, runner.max_epochs + 1)):
            raise SkulabError(f"{self.model_dir}: history has epochs {epochs}, expected 1..{runner.max_epochs}; delete the folder to retrain the cell")
        pointer = runner.message_hub.get_info("best_ckpt")  # what CheckpointHook saved last, by SELECT_METRIC
        best = self.model_dir / Path(pointer).name if pointer else None
        if best is None or not best.is_file():
            raise SkulabError(f"{self.model_dir}: no best checkpoint by {SELECT_METRIC} (mmengine's best_ckpt: {pointer})")
        epoch = int(best.stem.rsplit("_", 1)[1])
        row = next((row for row in history if row["epoch"] == epoch), None)
        if row is None:
            raise SkulabError(f"{self.model_dir}: best checkpoint {best.name} is from epoch {epoch}, which has no history row")
        return best, row

    def _finish(self, runner, history: list[dict], logger: RunLogger) -> dict:
        barrier()  # world_size > 1: rank 0 has written the last and best checkpoints
        best, best_row = self._best(runner, history)
        best_epoch = best_row["epoch"]
        last = Path((self.model_dir / "last_checkpoint").read_text().strip())
        runner.load_checkpoint(str(best))
        self._detect_val(runner)
        test = runner.test()
        final = {
            "best_epoch": best_epoch,
            "run_id": self.run_id,
            **{k: v for k, v in best_row.items() if k.startswith("val_")},
            **{f"test_{metric_name(k)}": float(v) for k, v in test.items()},
            "seconds_per_iter": float(np.mean([row["seconds_per_iter"] for row in history])),
            "train_seconds": sum(row["epoch_seconds"] for row in history),
        }
        if not is_main_process():  # world_size > 1: every rank tested its shard; rank 0 writes and logs
            return final
        # Stable names for DVC and MLflow: best.pth keeps only the weights (what inference needs).
        weights = checkpoints.load(best)
        checkpoints.save({"state_dict": weights["state_dict"], "meta": weights.get("meta", {})}, self.model_dir / "best.pth")
        best.unlink()
        last.replace(self.model_dir / "last.pth")
        (self.model_dir / "last_checkpoint").unlink()
        self.save_state(finished=True, history=history)
        logger.log_metrics({k: v for k, v in final.items() if k.startswith("test_")})
        logger.log_metric("best_epoch", best_epoch)
        write_json_atomic(self.metrics_dir / "final.json", final)
        plot_history(history, self.metrics_dir / "curves.png", f"train_detector@{self.name}", DETECTOR_SCORES, "val COCO bbox")
        for path in ("final.json", "history.csv", "curves.png"):
            logger.log_artifact(self.metrics_dir / path, artifact_path="metrics")
        logger.log_artifact(self.model_dir / "config.py", artifact_path="config")
        logger.log_artifact(self.detections_file, artifact_path="detections")
        logger.log_artifact(self.val_detections_file, artifact_path="detections")
        for path in ("best.pth", "last.pth"):
            logger.log_artifact(self.model_dir / path, artifact_path="checkpoints")
        return final

