"""The reference classifier: trained once on the clients' real training pool, it judges synthetic images
(classifiability, Fréchet features) and evaluation reuses it.

Saved as ``model.pt`` (state dict) and ``config.json`` (what ``build_model`` needs to rebuild it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from regl.errors import ReglError
from regl.models import build_model
from regl.params import Section
from regl.shards import Shard
from regl.tensors import shard_tensors
from regl.training import SGDConfig, train_epochs


class ReferenceClassifierParams(Section):
    """Stage reference_classifier: the classifier that judges synthetic images (and that evaluation reuses)."""

    model: Literal["cnn", "resnet18"] = "cnn"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0)


def train_reference(train: Shard, model_name: str, cfg: SGDConfig, seed: int) -> tuple[nn.Module, dict]:
    x, y = shard_tensors(train)
    config = {"model": model_name, "channels": int(x.shape[1]), "num_classes": len(train.class_names),
              "image_size": int(x.shape[2]), "class_names": list(train.class_names)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_name, config["channels"], config["num_classes"], config["image_size"])
    train_epochs(model, x, y, cfg, seed, "reference_classifier")
    model.eval()
    return model, config


def save_reference(model: nn.Module, config: dict, folder: Path) -> None:
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_reference(folder: str | Path) -> tuple[nn.Module, dict]:
    folder = Path(folder)
    if not (folder / "model.pt").is_file():
        raise ReglError(f"{folder}/model.pt: reference classifier not found (run `dvc repro reference_classifier`)")
    config = json.loads((folder / "config.json").read_text())
    model = build_model(config["model"], config["channels"], config["num_classes"], config["image_size"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, config
