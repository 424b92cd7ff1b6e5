"""Between the data's pixels and the generator's: the side and channels the pipeline works in, and the VAE's
latents.

tiny-sd works at the data's own size and channels, so both directions are the identity there; a real
checkpoint (512 px RGB) gets the client's images resized and made RGB, and its images come back at the data's size.
"""

from __future__ import annotations

import numpy as np
import torch

from regl.generator.base import resolution
from regl.data.images import conform, resize, to_pil
from regl.data.tensors import to_float


def _reshape(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    if pixels.shape[1] == size and pixels.shape[3] == channels:
        return pixels
    out = [np.asarray(conform(resize(to_pil(p), size), channels)) for p in pixels]
    return np.stack([o[:, :, None] if o.ndim == 2 else o for o in out])


def to_model(pixels: np.ndarray, pipe) -> torch.Tensor:
    """(N, H, W, C) uint8 data pixels -> (N, C', S, S) float in [-1, 1] at the pipeline's side and channels."""
    return to_float(_reshape(pixels, resolution(pipe), pipe.vae.config.in_channels))


def to_data(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(N, S, S, C') float in [0, 1] pipeline output -> (N, size, size, channels) uint8."""
    pixels = np.floor(np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return _reshape(pixels, size, channels)




@torch.no_grad()
def encode_moments(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of every image, in float32 (the trainers sample latents from it each step).

    Batched by pixel count, about 4 M pixels a batch: 512 px images go 16 at a time, tiny-sd's 32 px ones 256."""
    dev, dtype = vae.device, vae.dtype
    batch_size = max(1, min(256, 2**22 // (images.shape[-1] * images.shape[-2])))
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        post = vae.encode(images[i : i + batch_size].to(dev, dtype)).latent_dist
        means.append(post.mean.float())
        stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)
