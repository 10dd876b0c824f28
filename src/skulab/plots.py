"""PNG plots next to the tables: training curves per cell and the ablation summary."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skulab.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


RECOGNIZER_SCORES = ("train_acc", "val_top1", "val_proto_acc", "val_precision_at_1", "val_map_at_r")
DETECTOR_SCORES = ("val_bbox_mAP", "val_bbox_mAP_50", "val_bbox_mAP_75", "val_bbox_AR_100")


def plot_history(history: list[dict], path: Path, title: str, scores: tuple[str, ...] = RECOGNIZER_SCORES, scores_title: str = "accuracy") -> None:
    """Loss, learning rate and scores (accuracies, mAP) per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    loss_keys = [k for k in history[0] if k.startswith("train_loss")]
    for key in loss_keys:
        axes[0].plot(epochs, [row[key] for row in history], label=key.removeprefix("train_"))
    axes[0].set_title("train loss")
    axes[1].plot(epochs, [row["lr"] for row in history])
    axes[1].set_title("learning rate")
    for key in scores:
        if key in history[0]:
            axes[2].plot(epochs, [row[key] for row in history], label=key)
    axes[2].set_title(scores_title)
    axes[2].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_summary(stats: dict[str, dict], label: str, path: Path) -> None:
    """Mean +- std over seeds per variant (name -> {"mean", "std"}), best on top."""
    names = sorted(stats, key=lambda name: stats[name]["mean"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(names, [stats[n]["mean"] for n in names], xerr=[stats[n]["std"] for n in names], color="#4c72b0")
    ax.set_xlabel(f"{label} (mean +- std over seeds)")
    ax.set_xlim(0, 1)
    _save(fig, path)


def plot_box_sizes(coco_by_split: dict[str, dict], path: Path) -> None:
    """Histograms of box width and height per split (pixels)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for split, coco in coco_by_split.items():
        for ax, index, label in ((axes[0], 2, "width"), (axes[1], 3, "height")):
            ax.hist([a["bbox"][index] for a in coco["annotations"]], bins=30, alpha=0.5, label=split)
            ax.set_xlabel(f"box {label} (px)")
    axes[0].set_ylabel("boxes")
    axes[0].legend()
    _save(fig, path)


def plot_val_curves(histories: dict[str, dict[int, list[dict]]], metric: str, path: Path) -> None:
    """`metric` per epoch for every cell, one colour per variant, one line per seed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab20")
    for index, (variant, by_seed) in enumerate(sorted(histories.items())):
        for number, history in enumerate(by_seed.values()):
            ax.plot(
                [row["epoch"] for row in history],
                [float(row[metric]) for row in history],
                color=colours(index % 20),
                label=variant if number == 0 else None,
                alpha=0.85,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    _save(fig, path)


def plot_detectors(detectors: dict[str, dict], metrics: tuple[str, ...], path: Path) -> None:
    """Grouped bars: each detector's COCO scores side by side."""
    names = list(detectors)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.5))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [n + (i - (len(metrics) - 1) / 2) * width for n in range(len(names))]
        ax.bar(xs, [detectors[name][metric] for name in names], width, label=metric)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("COCO bbox")
    ax.legend(fontsize=7)
    ax.set_title("detectors")
    _save(fig, path)
