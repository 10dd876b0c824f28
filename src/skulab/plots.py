"""PNG plots next to the tables: training curves per cell, the report's per-axis curves, CIs and
confusions, and the prepared dataset's SKU gallery and contact sheet (drawn with PIL)."""

import io
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skulab.io import atomic_path, write_bytes_atomic  # noqa: E402


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


def _save_image(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def plot_sku_gallery(sprites: list[tuple[str, Image.Image]], path: Path, cell: int = 96) -> None:
    """Every SKU (name, RGBA sprite) side by side with its name, so look-alike groups can be compared."""
    cols = 8
    rows = (len(sprites) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 14)), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    for i, (name, original) in enumerate(sprites):
        sprite = original.copy()
        sprite.thumbnail((cell - 8, cell - 8))
        x, y = (i % cols) * cell, (i // cols) * (cell + 14)
        sheet.paste(sprite, (x + (cell - sprite.width) // 2, y + 2), sprite)
        draw.text((x + 2, y + cell), name[:16], fill=(0, 0, 0))
    _save_image(sheet, path)


def plot_contact_sheet(images: Iterable[tuple[Image.Image, list[tuple]]], path: Path, width: int) -> None:
    """Images with their boxes (x, y, w, h, class id) and class ids drawn, at most `width` pixels a side, 3 a row.

    Draws on the images it is given and shrinks each before taking the next (pass a generator to
    hold one full-size image at a time).
    """
    tiles = []
    for image, boxes in images:
        draw = ImageDraw.Draw(image)
        for x, y, w, h, class_id in boxes:
            draw.rectangle([x, y, x + w, y + h], outline=(255, 0, 255), width=2)
            draw.text((x + 2, y + 2), str(class_id), fill=(255, 255, 0))
        image.thumbnail((width, width))
        tiles.append(image)
    cols = min(3, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    tile_w, tile_h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * tile_w, (i // cols) * tile_h))
    _save_image(sheet, path)


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


MAX_LINES = 6  # more lines than this in one figure can't be told apart


def _band(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and sample std over seeds (std 0 for one seed), up to the shortest curve."""
    length = min(len(c) for c in curves)
    values = np.array([c[:length] for c in curves], dtype=float)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(length)
    return np.arange(1, length + 1), values.mean(axis=0), std


def plot_mean_curves(series: dict[str, list[list[float]]], metric: str, path: Path, title: str, baseline: str | None = None, notes: dict[str, str] | None = None) -> None:
    """Mean over seeds per epoch with a +-1 std band, one colour per variant (at most MAX_LINES).

    The baseline is black and dashed, so every axis figure reads against the same reference.
    """
    if len(series) > MAX_LINES:
        raise ValueError(f"{len(series)} lines in one figure; split them (at most {MAX_LINES})")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colours = plt.get_cmap("tab10")
    for index, (name, curves) in enumerate(series.items()):
        epochs, mean, std = _band(curves)
        colour = "black" if name == baseline else colours(index % 10)
        label = f"{name} (n={len(curves)}{(notes or {}).get(name, '')})"
        ax.plot(epochs, mean, color=colour, linestyle="--" if name == baseline else "-", marker="o", markersize=3, label=label)
        if len(curves) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (mean, band: +-1 std over seeds)")
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_title(title)
    _save(fig, path)


def plot_final_bars(bars: list[dict], path: Path, title: str) -> None:
    """Per variant, a bar per metric at its mean with its 95% CI and a dot per seed.

    `bars`: [{"name", "metrics": {metric: {"mean", "ci_low", "ci_high", "values"}}}]; a bound of
    None (one seed) draws no interval.
    """
    metrics = list(dict.fromkeys(m for bar in bars for m in bar["metrics"]))
    names = [bar["name"] for bar in bars][::-1]  # first on top
    height = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) * max(1, len(metrics)) + 1.4))
    colours = plt.get_cmap("tab10")
    for m_index, metric in enumerate(metrics):
        for row, bar in enumerate(bars[::-1]):
            entry = bar["metrics"].get(metric)
            if entry is None:
                continue
            y = row - (m_index - (len(metrics) - 1) / 2) * height  # first metric on top
            ax.barh(y, entry["mean"], height, color=colours(m_index), alpha=0.75, label=metric if row == 0 else None)
            if entry.get("ci_low") is not None:
                ax.errorbar(entry["mean"], y, xerr=[[entry["mean"] - entry["ci_low"]], [entry["ci_high"] - entry["mean"]]], color="black", capsize=3, linewidth=1)
            ax.scatter(entry.get("values", []), [y] * len(entry.get("values", [])), color="black", s=9, zorder=3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean over seeds; whisker: 95% CI (t); dots: seeds")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_title(title)
    _save(fig, path)


def plot_epoch_lines(lines: dict[str, list[float]], metric: str, path: Path, title: str) -> None:
    """One line per run (e.g. a detector's val mAP per epoch), at most MAX_LINES."""
    if len(lines) > MAX_LINES:
        raise ValueError(f"{len(lines)} lines in one figure; split them (at most {MAX_LINES})")
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for label, values in lines.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_title(title)
    _save(fig, path)


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path, title: str) -> None:
    """Rows: true class, columns: predicted; colour: share of the row; numbers: crops (confusions in bold red)."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.32 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for t, p in zip(*np.nonzero(counts)):
        colour = "white" if shares[t, p] > 0.5 else ("#b2182b" if t != p else "black")
        ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=7, color=colour, fontweight="bold" if t != p else "normal")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title)
    _save(fig, path)


def plot_score_threshold(curve: dict, chosen: float, path: Path, title: str) -> None:
    """Precision, recall and F1 of matched detections against the score threshold, the chosen one marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("precision", "recall", "f1"):
        ax.plot(curve["threshold"], curve[key], label=key)
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen {chosen:.3f}")
    ax.set_xlabel("score threshold")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def plot_nothing(path: Path, message: str) -> None:
    """A placeholder figure that says why there is no plot (a DVC output must exist)."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10)
    _save(fig, path)
