"""Pictures people would rather look at than read; written deterministically (no timestamps)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from regl.core.atomic import atomic_file  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path) -> None:
    """PNG with no Software or date chunk, so the same figure gives the same bytes."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


def draw_counts(ax, counts: np.ndarray, row_labels: list[str], col_labels: list[str], title: str) -> None:
    """Rows x columns of counts on ``ax``, numbers in the cells, colour on a log scale so a 1 still shows."""
    rows, cols = counts.shape
    shown = np.log1p(counts.astype(np.float64))
    ax.imshow(shown, cmap="Blues", aspect="auto", vmin=0, vmax=max(shown.max(), 1e-9))
    ax.set_xticks(range(cols), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(rows), row_labels)
    ax.set_title(title)
    threshold = shown.max() * 0.6
    fontsize = 8 if cols <= 12 else 6
    if rows * cols <= 2500:
        for r in range(rows):
            for c in range(cols):
                if counts[r, c]:
                    ax.text(c, r, str(int(counts[r, c])), ha="center", va="center", fontsize=fontsize,
                            color="white" if shown[r, c] > threshold else "black")


def count_heatmap(counts: np.ndarray, row_labels: list[str], col_labels: list[str], title: str) -> "plt.Figure":
    rows, cols = counts.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * cols, 1.2 + 0.4 * rows))
    draw_counts(ax, counts, row_labels, col_labels, title)
    return fig


def heatmaps_side_by_side(panels: list[tuple[np.ndarray, str]], row_labels: list[str],
                          col_labels: list[str]) -> "plt.Figure":
    rows, cols = panels[0][0].shape
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.0 + 0.75 * cols), 1.2 + 0.4 * rows))
    for ax, (counts, title) in zip(np.atleast_1d(axes), panels):
        draw_counts(ax, counts, row_labels, col_labels, title)
    fig.tight_layout()
    return fig


def class_accuracy_figure(class_names: list[str], real: np.ndarray, synthetic: np.ndarray, before: np.ndarray,
                          after: np.ndarray, title: str) -> "plt.Figure":
    """The method's Fig. 1: a client's real and synthetic image counts per class (bars) and per-class test
    accuracy before and after its local update (lines)."""
    k = len(class_names)
    pos = np.arange(k)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * k), 4.0))
    ax.bar(pos - 0.2, real, width=0.4, label="real images", color="#4c72b0")
    ax.bar(pos + 0.2, synthetic, width=0.4, label="synthetic images", color="#dd8452")
    ax.set_ylabel("images")
    ax.set_xticks(pos, class_names, rotation=45, ha="right")
    acc = ax.twinx()
    acc.plot(pos, before, "o-", color="#55a868", label="accuracy before local update")
    acc.plot(pos, after, "s--", color="#c44e52", label="accuracy after local update")
    acc.set_ylim(0, 1.05)
    acc.set_ylabel("test accuracy per class")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.35),
              ncol=2, fontsize=8, frameon=False)
    ax.set_title(title)
    return fig
