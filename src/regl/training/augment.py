"""Data augmentation of a training batch, seeded by its keys: the same (seed, client, round, epoch, batch)
always gives the same images, whatever the number of loader workers (it runs on the batch, after loading)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from regl.core.seeding import derive_seed

Augment = Literal["none", "flip", "crop_flip"]

# torchvision's RandomResizedCrop defaults: area share and aspect-ratio range of the crop, tries before the
# centre-crop fallback
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10


def augment(x: torch.Tensor, how: Augment, seed: int, *keys: object) -> torch.Tensor:
    """``x`` (N, C, H, W) augmented: ``none`` returns it as is; ``flip`` mirrors each image left-right with
    probability 1/2; ``crop_flip`` first takes a random resized crop of each (area 8-100 %, aspect 3/4-4/3,
    bilinear back to H x W), then flips."""
    if how == "none" or not len(x):
        return x
    gen = torch.Generator().manual_seed(derive_seed(seed, *keys, "augment"))
    if how == "crop_flip":
        x = torch.stack([_resized_crop(img, gen) for img in x])
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def crop_box(height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, as torchvision's RandomResizedCrop draws it."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(TRIES):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (SCALE[0] + u[0] * (SCALE[1] - SCALE[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    side = min(height, width)  # fallback: the centre square
    return (height - side) // 2, (width - side) // 2, side, side


def _resized_crop(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, height, width = img.shape
    top, left, h, w = crop_box(height, width, gen)
    crop = img[None, :, top : top + h, left : left + w]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
