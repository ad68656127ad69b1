"""Figures of notebook 09: lung boxes on images, and cropped vs uncropped metrics with their intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..plots import plt

LUNG_COLORS = ("tab:red", "tab:green")
TRUE_COLOR = "tab:blue"


def _draw(ax, box, size: int, color: str, style: str = "-") -> None:
    from matplotlib.patches import Rectangle
    x0, y0, x1, y1 = np.asarray(box, dtype=float) * size
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linestyle=style, linewidth=1.5))


def plot_boxes(images: np.ndarray, pred: np.ndarray, title: str, true: np.ndarray | None = None,
               fell_back: np.ndarray | None = None, labels: Sequence[str] | None = None, columns: int = 6):
    """A grid of square images with each lung's box (rel_xyxy): detector solid, mean-box fallback dotted,
    annotation (``true``) dashed blue. Axes in pixels of the shown image."""
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        img = np.asarray(images[i])
        img = img[..., 0] if img.ndim == 3 else img
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        for k, color in enumerate(LUNG_COLORS):
            style = ":" if fell_back is not None and fell_back[i, k] else "-"
            _draw(ax, pred[i, k], img.shape[0], color, style)
            if true is not None:
                _draw(ax, true[i, k], img.shape[0], TRUE_COLOR, "--")
        ax.set_xticks([0, img.shape[1] - 1])
        ax.set_yticks([0, img.shape[0] - 1])
        ax.tick_params(labelsize=6)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("x (px)", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("y (px)", fontsize=7)
    fig.suptitle(title + "\n(red: right lung, green: left lung; solid: detector, dotted: mean box (no confident box)"
                 + (", blue dashed: annotation" if true is not None else "") + ")", fontsize=10)
    fig.tight_layout()
    return fig


def plot_cropped_vs_uncropped(record: dict, title: str):
    """Forest plot: each model's internal and external metrics on whole images and on lung crops, 95 % intervals."""
    rows = []
    for normals, by_arch in record["runs"].items():
        for arch, run in by_arch.items():
            for metric in ("roc_auc", "sensitivity", "specificity"):
                rows.append((f"{arch}, normals={normals}: internal {metric.replace('_', ' ')}",
                             run["uncropped"]["metrics"].get(metric), run["cropped"]["metrics"].get(metric)))
            for coll, ext in run.get("external", {}).items():
                rows.append((f"{arch}, normals={normals}: {coll} {ext['metric']}", ext["uncropped"], ext["cropped"]))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.4))
    shown = set()
    for i, (_, unc, crop) in enumerate(rows):
        for entry, dy, color, name in ((unc, -0.15, "tab:gray", "whole images"), (crop, 0.15, "tab:purple", "lung crops")):
            if not entry or entry.get("value") is None:
                continue
            lo, hi = entry["ci95"]
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [i + dy, i + dy], color=color)
            ax.plot(entry["value"], i + dy, "o", color=color, label=None if name in shown else name)
            shown.add(name)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("metric value (fraction; 95% interval, patients as clusters)")
    ax.set_ylabel("model and measure")
    ax.set_title(title)
    if shown:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
