"""Local personalization (the method's local task): each client fine-tunes the global model on its own real
images plus the synthetic images of the classes it holds, and is scored on its local test view before and
after, and per class on the global test set (which classes the local update keeps or forgets)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import nn

from regl.client_data import ClientData
from regl.evaluation import confusion_matrix, per_class_accuracy
from regl.params import Device, Section
from regl.training import SGDConfig, predict, train_epochs


class PersonalizeParams(Section):
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    synthetic: bool = False
    seed: int = Field(0, ge=0)
    device: Device = "auto"


@dataclass
class Personalized:
    model: nn.Module
    accuracy_before: float  # global model on the local test view
    accuracy_after: float  # personal model on the local test view
    class_accuracy_before: np.ndarray  # global model, per class, on the global test set
    class_accuracy_after: np.ndarray


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    if len(y) == 0:
        return float("nan")
    return (predict(model, x, device=device).argmax(1) == y).float().mean().item()


def _class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, device) -> np.ndarray:
    predicted = predict(model, x, device=device).argmax(1).numpy()
    return per_class_accuracy(confusion_matrix(y.numpy(), predicted, num_classes))


def personalize(global_model: nn.Module, data: ClientData, local_test: tuple[torch.Tensor, torch.Tensor],
                global_test: tuple[torch.Tensor, torch.Tensor], num_classes: int, p: PersonalizeParams,
                device: torch.device, before_classes: np.ndarray | None = None) -> Personalized:
    """Fine-tune a copy of ``global_model`` on ``data`` for ``p.epochs`` epochs (batch order keyed by the
    personalize seed and the client). ``before_classes``: the global model's per-class accuracy, if known."""
    model = copy.deepcopy(global_model).to(device)
    before = _accuracy(model, *local_test, device)
    if before_classes is None:
        before_classes = _class_accuracy(model, *global_test, num_classes, device)
    sgd = SGDConfig(p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay)
    if p.epochs:
        train_epochs(model, data.x, data.y, sgd, p.seed, "personalize", data.client, device=device)
    return Personalized(model, before, _accuracy(model, *local_test, device), before_classes,
                        _class_accuracy(model, *global_test, num_classes, device))
