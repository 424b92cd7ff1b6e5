"""Shards as tensors: uint8 pixels become float images in [-1, 1], channels first."""

from __future__ import annotations

import numpy as np
import torch

from regl.data.shards import Shard


def to_float(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1] (the diffusion models' range too), on the
    pixels' device."""
    if not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    x = pixels.permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8, rounding half up."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def shard_tensors(shard: Shard, channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a shard, ready for a classifier."""
    return to_float(shard.pixels(channels)), torch.from_numpy(shard.labels.copy())
