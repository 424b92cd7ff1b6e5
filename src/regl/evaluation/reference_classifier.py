"""The reference classifier (stage reference_classifier): trained once on the clients' real training pool, it
judges synthetic images (classifiability, Fréchet features) and evaluation reuses it.

Saved like every regl classifier (``regl.training.modelio``): ``model.safetensors``, its architecture and class names in
the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from regl.data.imageset import ShardImages
from regl.training.modelio import load_model, save_model
from regl.training.models import build_model
from regl.training.loop import SGDParams, train_epochs


class ReferenceClassifierParams(SGDParams):
    """Stage reference_classifier: the classifier that judges synthetic images (and that evaluation reuses)."""

    model: Literal["cnn", "resnet18"] = "cnn"
    epochs: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)


def train_reference(train: ShardImages, p: ReferenceClassifierParams,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    size, _, channels = train.shape
    config = {"name": p.model, "channels": channels, "num_classes": len(train.class_names),
              "image_size": size, "class_names": list(train.class_names)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        model = build_model(p.model, config["channels"], config["num_classes"], config["image_size"])
    train_epochs(model.to(device), train, p, p.epochs, p.seed, "reference_classifier", device=device)
    model.eval()
    return model, config


WEIGHTS = "model.safetensors"


def save_reference(model: nn.Module, config: dict, folder: Path) -> None:
    save_model(folder / WEIGHTS, model, config)


def load_reference(folder: str | Path) -> tuple[nn.Module, dict]:
    """The classifier (in eval mode) and its metadata: name, channels, num_classes, image_size, class_names."""
    model, config = load_model(Path(folder) / WEIGHTS)
    return model.eval(), config
