"""Local personalization (stage personalize, the method's local task): each client fine-tunes the global model
on its own real images plus the synthetic images of the classes it holds, and is scored on its local test view
before and after, and per class on the global test set (which classes the local update keeps or forgets)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import nn

from regl.data.client_data import ClientData
from regl.evaluation.scoring import accuracy, class_accuracy, predicted_classes, rounded
from regl.data.imageset import ShardImages
from regl.core.params import Device
from regl.training.loop import SGDParams, train_epochs


class PersonalizeParams(SGDParams):
    epochs: int = Field(5, ge=0)
    synthetic: bool = True
    seed: int = Field(0, ge=0)
    device: Device = "auto"


@dataclass
class Personalized:
    model: nn.Module
    accuracy_before: float  # global model on the local test view
    accuracy_after: float  # personal model on the local test view
    class_accuracy_before: np.ndarray  # global model, per class, on the global test set
    class_accuracy_after: np.ndarray


def _local_accuracy(model: nn.Module, data: ShardImages, device, p: PersonalizeParams) -> float:
    return accuracy(data.labels.numpy(), predicted_classes(model, data, device, p)) if len(data) else float("nan")


def personalize(global_model: nn.Module, data: ClientData, local_test: ShardImages, global_test: ShardImages,
                num_classes: int, p: PersonalizeParams, device: torch.device,
                before_classes: np.ndarray | None = None) -> Personalized:
    """Fine-tune a copy of ``global_model`` on ``data`` for ``p.epochs`` epochs (batch order keyed by the
    personalize seed and the client). ``before_classes``: the global model's per-class accuracy, if known."""
    model = copy.deepcopy(global_model).to(device)
    y_test = global_test.labels.numpy()
    before = _local_accuracy(model, local_test, device, p)
    if before_classes is None:
        before_classes = class_accuracy(y_test, predicted_classes(model, global_test, device, p), num_classes)
    if p.epochs:
        train_epochs(model, data.images, p, p.epochs, p.seed, "personalize", data.client, device=device)
    after_classes = class_accuracy(y_test, predicted_classes(model, global_test, device, p), num_classes)
    return Personalized(model, before, _local_accuracy(model, local_test, device, p), before_classes, after_classes)


def client_metrics(data: ClientData, local_test_size: int, result: Personalized, class_names: list[str]) -> dict:
    """One client's entry in metrics/personalize.json."""
    return {
        "real": data.num_real,
        "synthetic": data.num_synthetic,
        "local_test": local_test_size,
        "classes_held": [class_names[k] for k in np.unique(data.images.labels[: data.num_real].numpy())],
        "accuracy_before": rounded(result.accuracy_before),
        "accuracy_after": rounded(result.accuracy_after),
        "class_accuracy_before": {n: rounded(v) for n, v in zip(class_names, result.class_accuracy_before)},
        "class_accuracy_after": {n: rounded(v) for n, v in zip(class_names, result.class_accuracy_after)},
    }


def reported(values: np.ndarray) -> np.ndarray:
    """Per-class accuracies as metrics/personalize.json reports them (6 digits), so the figures show exactly
    the reported figures."""
    return np.array([np.nan if np.isnan(v) else rounded(v) for v in values])


def summary(p: PersonalizeParams, per_client: dict[str, dict]) -> dict:
    """metrics/personalize.json: headline figures first, then one entry per client."""
    after = [c["accuracy_after"] for c in per_client.values() if c["accuracy_after"] is not None]
    before = [c["accuracy_before"] for c in per_client.values() if c["accuracy_before"] is not None]
    return {
        "epochs": p.epochs,
        "synthetic": p.synthetic,
        "accuracy_before_mean": rounded(np.mean(before)),
        "accuracy_after_mean": rounded(np.mean(after)),
        "accuracy_after_std": rounded(np.std(after)),
        "per_client": per_client,
    }
