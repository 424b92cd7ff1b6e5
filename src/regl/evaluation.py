"""Accuracy figures from predictions: overall, per class, macro, and the confusion matrix."""

from __future__ import annotations

import numpy as np


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[a, p]: images of class a predicted as p."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no images)."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)


def accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def macro_accuracy(confusion: np.ndarray) -> float:
    """Mean of the per-class accuracies over classes that have images."""
    return float(np.nanmean(per_class_accuracy(confusion)))


def rounded(value: float, digits: int = 6) -> float | None:
    """JSON-friendly: NaN becomes null."""
    return None if value is None or np.isnan(value) else round(float(value), digits)
