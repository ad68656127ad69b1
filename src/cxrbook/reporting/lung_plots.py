"""Figures of notebook 09: lung boxes on images, and cropped vs uncropped metrics (DRAFT)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LUNG_COLORS = ("tab:red", "tab:green")


def _plt():
    from ..plots import plt
    return plt


def _draw(ax, box, size: int, color: str, style: str = "-") -> None:
    from matplotlib.patches import Rectangle
    x0, y0, x1, y1 = np.asarray(box, dtype=float) * size
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linestyle=style, linewidth=1.5))


def plot_boxes(images: np.ndarray, pred: np.ndarray, title: str, true: np.ndarray | None = None,
               fell_back: np.ndarray | None = None, labels: Sequence[str] | None = None, columns: int = 6):
    """A grid of images with each lung's box (rel_xyxy): predicted solid, true dashed, fallback (mean box) dotted."""
    plt = _plt()
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        img = img[..., 0] if img.ndim == 3 else img
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        for k, color in enumerate(LUNG_COLORS):
            style = ":" if fell_back is not None and fell_back[i, k] else "-"
            _draw(ax, pred[i, k], img.shape[0], color, style)
            if true is not None:
                _draw(ax, true[i, k], img.shape[0], "tab:blue", "--")
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    fig.suptitle(title + "\n(red: right lung, green: left lung; solid: detector, dotted: mean box fallback"
                 + (", blue dashed: annotation" if true is not None else "") + ")", fontsize=10)
    fig.tight_layout()
    return fig


def plot_cropped_vs_uncropped(record: dict, title: str):
    """Forest plot: each model's internal and external metrics, uncropped vs cropped, with 95 % intervals."""
    plt = _plt()
    rows = []
    for normals, by_arch in record["runs"].items():
        for arch, run in by_arch.items():
            for metric in ("roc_auc", "sensitivity", "specificity"):
                rows.append((f"{arch}, normals={normals}: internal {metric}",
                             run["uncropped"]["metrics"].get(metric), run["cropped"]["metrics"].get(metric)))
            for coll, ext in run.get("external", {}).items():
                rows.append((f"{arch}, normals={normals}: {coll} {ext['metric']}", ext["uncropped"], ext["cropped"]))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    for i, (_, unc, crop) in enumerate(rows):
        for entry, dy, color, name in ((unc, -0.15, "tab:gray", "uncropped"), (crop, 0.15, "tab:purple", "cropped")):
            if not entry or entry.get("value") is None:
                continue
            lo, hi = entry["ci95"]
            ax.plot([lo, hi], [i + dy, i + dy], color=color)
            ax.plot(entry["value"], i + dy, "o", color=color, label=name if i == 0 else None)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("metric value (95% patient-bootstrap interval)")
    ax.set_title(title)
    if rows:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
