"""Pictures people would rather look at than read; written deterministically (no timestamps)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from regl.atomic import atomic_file  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path) -> None:
    """PNG with no Software or date chunk, so the same figure gives the same bytes."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


def count_heatmap(counts: np.ndarray, row_labels: list[str], col_labels: list[str], title: str) -> "plt.Figure":
    """Rows x columns of counts, numbers in the cells, colour on a log scale so a 1 still shows."""
    rows, cols = counts.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * cols, 1.2 + 0.4 * rows))
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
    return fig
