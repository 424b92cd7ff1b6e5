"""Classifiers: a small CNN for the embedded default's small images, torchvision's ResNet-18 for 224 px.

Every model exposes ``features(x)`` (the penultimate embedding, the Fréchet features) and ``head`` (the linear
classifier), and ``forward(x) = head(features(x))``. ``build_model(..., projection=d)`` puts MOON's projection
head between the backbone and the classifier (``Projected``); its ``features`` is then the projection.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("cnn", "resnet18")
GROUPS = 4  # GroupNorm groups in the cnn


class SmallCNN(nn.Module):
    """Three conv blocks (16-32-64 channels, the first two halving the side, the last pooled to 4 x 4) and a
    128-wide embedding (the representation MOON contrasts)."""

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 16, embed: int = 128,
                 norm: bool = True):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"the cnn needs images of at least 8 px, got {image_size}")
        w = width

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            return [conv, nn.GroupNorm(GROUPS, c_out), nn.ReLU()] if norm else [conv, nn.ReLU()]

        self.body = nn.Sequential(
            *block(channels, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * w * 16, embed), nn.ReLU(),
        )
        self.embed_dim = embed
        self.head = nn.Linear(embed, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (random init: no weights are downloaded), grey input repeated to 3 channels."""

    def __init__(self, channels: int, num_classes: int, image_size: int):
        super().__init__()
        from torchvision.models import resnet18

        if image_size < 32:
            raise ValueError(f"resnet18 needs images of at least 32 px, got {image_size}")
        net = resnet18(weights=None, num_classes=num_classes)
        self.channels = channels
        self.embed_dim = net.fc.in_features
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Projected(nn.Module):
    """MOON's network (Li et al., CVPR 2021, and its reference code): the backbone's representation h, a
    projection head z = W2 ReLU(W1 h + b1) + b2 (a two-layer MLP, W1 d x d, W2 ``dim`` x d, d the backbone's
    width), and the classifier on z. ``features(x)`` = z, the representation the contrastive loss compares."""

    def __init__(self, base: nn.Module, num_classes: int, dim: int):
        super().__init__()
        width = base.embed_dim
        base.head = nn.Identity()  # the backbone's own classifier is replaced by the one on the projection
        self.backbone = base
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))
        self.embed_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, channels: int, num_classes: int, image_size: int, projection: int = 0) -> nn.Module:
    """``projection`` > 0: MOON's projection head of that output width after the backbone (``Projected``)."""
    if name == "cnn":
        model: nn.Module = SmallCNN(channels, num_classes, image_size)
    elif name == "resnet18":
        model = ResNet18(channels, num_classes, image_size)
    else:
        raise ValueError(f"unknown model {name!r}: must be one of {', '.join(MODELS)}")
    return Projected(model, num_classes, projection) if projection else model
