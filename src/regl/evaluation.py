"""Scoring a classifier: predictions in batches, and accuracy figures from them (overall, per class, macro,
the confusion matrix). Every stage that reports an accuracy computes it here."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCORING_BATCH = 1024


def _batches(fn, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = SCORING_BATCH,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for every row of x, in batches, in eval mode."""
    model.eval()
    return _batches(model, x, batch_size, device)


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = SCORING_BATCH,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """Penultimate features (``model.features``) of every row of x."""
    model.eval()
    return _batches(model.features, x, batch_size, device)


def predicted_classes(model: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    return predict(model, x, device=device).argmax(1).numpy()


def accuracy(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Share of correct predictions (NaN for no images)."""
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    return float(np.mean(actual == predicted)) if len(actual) else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy and mean cross-entropy on (x, y)."""
    if len(y) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    logits = predict(model, x, device=device)
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


def evaluation_report(actual: np.ndarray, predicted: np.ndarray, class_names: list[str], clients: list[int],
                      real: np.ndarray, synthetic: np.ndarray, trained: dict, personal: dict) -> dict:
    """metrics/eval.json (stage evaluate): the global model's figures from its test predictions, the image
    counts training used (``real``/``synthetic``: clients x classes) and personalize's per-client results."""
    confusion = confusion_matrix(actual, predicted, len(class_names))
    used_synthetic = synthetic if trained.get("synthetic") else np.zeros_like(synthetic)
    per_client = personal["per_client"]
    after = np.array([c["accuracy_after"] for c in per_client.values() if c["accuracy_after"] is not None])
    return {
        "global_accuracy": rounded(accuracy(actual, predicted)),
        "macro_accuracy": rounded(macro_accuracy(confusion)),
        "personalized_accuracy_mean": rounded(after.mean()) if after.size else None,
        "personalized_accuracy_std": rounded(after.std()) if after.size else None,
        "algorithm": trained.get("algorithm"),
        "synthetic": trained.get("synthetic"),
        "real_images": int(real.sum()),
        "synthetic_images": int(used_synthetic.sum()),
        "per_class_accuracy": {n: rounded(v) for n, v in zip(class_names, per_class_accuracy(confusion))},
        "per_client": {
            str(c): {
                "real": int(real[i].sum()),
                "synthetic": int(used_synthetic[i].sum()),
                "personalized_accuracy": per_client[str(c)]["accuracy_after"],
                "global_model_accuracy": per_client[str(c)]["accuracy_before"],
            }
            for i, c in enumerate(clients)
        },
    }
