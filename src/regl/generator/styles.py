"""Image styles the public pool can be shown in: the stand-in for a domain gap (``generator.public_style``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

STYLES = ("none", "lowcontrast", "blur", "invert")


def apply_style(x: torch.Tensor, style: str) -> torch.Tensor:
    """``x``: (N, C, H, W) in [-1, 1]. lowcontrast halves the contrast around mid-grey; blur is a 3x3 box
    blur; invert swaps dark and light."""
    if style == "none":
        return x
    if style == "lowcontrast":
        return x * 0.5
    if style == "blur":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if style == "invert":
        return -x
    raise ValueError(f"unknown style {style!r}, expected one of {STYLES}")
