"""Scoring a classifier: predictions in batches, and accuracy figures from them (overall, per class, macro,
the confusion matrix). Every stage that reports an accuracy computes it here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from regl.training.compute import ComputeParams, autocast, in_layout, laid_out
from regl.core.errors import ReglError
from regl.data.imageset import Images, batches, in_order
from regl.core.params import Device, parse


class EvaluateParams(ComputeParams):
    """Stage evaluate (and generator_quality, which scores with the reference classifier): how the scoring runs."""

    device: Device = "auto"


def _batches(fn, model: nn.Module, data: Images, device, compute: ComputeParams) -> torch.Tensor:
    """``fn(xb)`` for every batch of ``data`` in order (``compute.scoring_batch`` images each), concatenated as
    float32 on the CPU; the model in eval mode."""
    device = torch.device(device)
    model.eval()
    out = []
    with laid_out(model, compute, device) as fmt:
        for xb, _ in batches(data, in_order(len(data), compute.scoring_batch), device, compute.loader_workers,
                             compute.prefetch):
            with autocast(compute, device):
                out.append(fn(in_layout(xb, fmt)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def predict(model: nn.Module, data: Images, device: torch.device | str = "cpu",
            compute: ComputeParams = ComputeParams()) -> torch.Tensor:
    """Logits for every image of ``data``, in batches, in eval mode."""
    return _batches(model, model, data, device, compute)


@torch.no_grad()
def embed(model: nn.Module, data: Images, device: torch.device | str = "cpu",
          compute: ComputeParams = ComputeParams()) -> torch.Tensor:
    """Penultimate features (``model.features``) of every image of ``data``."""
    return _batches(model.features, model, data, device, compute)


def predicted_classes(model: nn.Module, data: Images, device: torch.device | str = "cpu",
                      compute: ComputeParams = ComputeParams()) -> np.ndarray:
    return predict(model, data, device, compute).argmax(1).numpy()


def accuracy(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Share of correct predictions (NaN for no images)."""
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    return float(np.mean(actual == predicted)) if len(actual) else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, data: Images, device: torch.device | str = "cpu",
             compute: ComputeParams = ComputeParams()) -> dict[str, float]:
    """Accuracy and mean cross-entropy on ``data``."""
    if len(data) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    logits, y = predict(model, data, device, compute), data.labels
    return {"accuracy": accuracy(y.numpy(), logits.argmax(1).numpy()), "loss": F.cross_entropy(logits, y).item()}


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[a, p]: images of class a predicted as p."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no images)."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)


def class_accuracy(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return per_class_accuracy(confusion_matrix(actual, predicted, num_classes))


def macro_accuracy(confusion: np.ndarray) -> float:
    """Mean of the per-class accuracies over classes that have images."""
    return float(np.nanmean(per_class_accuracy(confusion)))


def rounded(value: float | None, digits: int = 6) -> float | None:
    """JSON-friendly: NaN becomes null."""
    return None if value is None or np.isnan(value) else round(float(value), digits)


class _Read(BaseModel):
    """The part of an earlier stage's metrics JSON a later stage reads (other keys are not its business)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TrainMetrics(_Read):
    algorithm: str
    synthetic: bool


class ClientPersonalization(_Read):
    accuracy_before: Optional[float]
    accuracy_after: Optional[float]


class PersonalizeMetrics(_Read):
    per_client: dict[str, ClientPersonalization]


M = TypeVar("M", bound=_Read)


def read_metrics(path: Path, model: type[M], writer: str, clients: list[int] | None = None) -> M:
    """An earlier stage's metrics JSON, checked against ``model`` (and, with ``clients``, holding a result for
    each): a missing, torn or mismatched file is one line naming it and the stage ``writer`` to re-run."""
    rerun = f"re-run {writer} (dvc repro {writer})"
    if not path.is_file():
        raise ReglError(f"{path} missing; {rerun}")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReglError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); {rerun}") from None
    if not isinstance(raw, dict):
        raise ReglError(f"{path}: expected a JSON object of metrics, got {type(raw).__name__}; {rerun}")
    try:
        result = parse(model, raw, "", path)
    except ReglError as exc:
        raise ReglError(f"{exc}; {rerun}") from None
    per_client = getattr(result, "per_client", None)
    missing = [c for c in clients or [] if per_client is not None and str(c) not in per_client]
    if missing:
        raise ReglError(f"{path}: no result for client(s) {missing} of params.yaml clients (it has "
                        f"{sorted(per_client, key=str)}); {rerun}")
    return result


def evaluation_report(actual: np.ndarray, predicted: np.ndarray, class_names: list[str], clients: list[int],
                      real: np.ndarray, synthetic: np.ndarray, trained: TrainMetrics,
                      personal: PersonalizeMetrics) -> dict:
    """metrics/eval.json (stage evaluate): the global model's figures from its test predictions, the image
    counts training used (``real``/``synthetic``: clients x classes) and personalize's per-client results."""
    confusion = confusion_matrix(actual, predicted, len(class_names))
    used_synthetic = synthetic if trained.synthetic else np.zeros_like(synthetic)
    per_client = personal.per_client
    after = np.array([c.accuracy_after for c in per_client.values() if c.accuracy_after is not None])
    return {
        "global_accuracy": rounded(accuracy(actual, predicted)),
        "macro_accuracy": rounded(macro_accuracy(confusion)),
        "personalized_accuracy_mean": rounded(after.mean()) if after.size else None,
        "personalized_accuracy_std": rounded(after.std()) if after.size else None,
        "algorithm": trained.algorithm,
        "synthetic": trained.synthetic,
        "real_images": int(real.sum()),
        "synthetic_images": int(used_synthetic.sum()),
        "per_class_accuracy": {n: rounded(v) for n, v in zip(class_names, per_class_accuracy(confusion))},
        "per_client": {
            str(c): {
                "real": int(real[i].sum()),
                "synthetic": int(used_synthetic[i].sum()),
                "personalized_accuracy": per_client[str(c)].accuracy_after,
                "global_model_accuracy": per_client[str(c)].accuracy_before,
            }
            for i, c in enumerate(clients)
        },
    }
