"""The per-client sample grid: one row per class; columns real (where the client has one) / vanilla / adapted."""

from __future__ import annotations

import numpy as np

from regl.evaluation.plots import plt


def sample_grid(rows: list[tuple[str, np.ndarray | None, np.ndarray, np.ndarray]], title: str,
                scale: float) -> "plt.Figure":
    """``rows``: (class name, real image or None, vanilla image, adapted image), each (H, W, C) uint8."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(3.6, 1.15 * len(rows) + 0.6), squeeze=False)
    for r, (name, *cells) in enumerate(rows):
        for c, image in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if image is None:
                ax.set_facecolor("white")
                ax.text(0.5, 0.5, "none held", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            elif image.shape[2] == 1:
                ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(image)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    for c, label in enumerate(("real", "vanilla", f"adapted ({scale:g})")):
        axes[0, c].set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig
