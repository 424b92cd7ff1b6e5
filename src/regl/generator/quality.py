"""Stage generator_quality's work: how good the synthetic images are: classifiability by the reference
classifier, and the Fréchet distance between the reference classifier's penultimate features of a client's real
images and of synthetic ones, class by class."""

from __future__ import annotations

import numpy as np
import torch

from regl.training.compute import ComputeParams
from regl.evaluation.scoring import accuracy, class_accuracy, embed, predicted_classes
from regl.data.imageset import ShardImages


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2) between two feature sets (rows = samples)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _sqrt_psd(ca)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * cross)


# A class's Fréchet distance rests on its real images' covariance: a class a client holds fewer images of is left
# out of the client's distance (the embedded default's clients each hold at least one class of 34 or more).
MIN_CLASS_IMAGES = 10


def class_frechet(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray) -> float | None:
    """The Fréchet distance between real and synthetic features of the same class, averaged over the classes with
    at least MIN_CLASS_IMAGES real images (and two synthetic ones), weighted by their real counts; None if no class
    has that many. A class's distance is biased by how few images estimate its covariance, so it compares two
    synthetic sets against the same real one (vanilla against adapted), not one client's figure with another's.

    Class by class, because the two sets' class proportions differ by design: a client's real images follow its
    skewed share (1,116 Trousers and 1 Bag), the synthetic ones are balanced (40 of each). Pooled, that mismatch
    of the mixtures dominates the distance and hides what the adapter changes in each class."""
    classes = [k for k in np.unique(real_labels)
               if (real_labels == k).sum() >= MIN_CLASS_IMAGES and (fake_labels == k).sum() >= 2]
    if not classes:
        return None
    weights = [(real_labels == k).sum() for k in classes]
    distances = [frechet_distance(real[real_labels == k], fake[fake_labels == k]) for k in classes]
    return float(np.average(distances, weights=weights))


@torch.no_grad()
def client_quality(model: torch.nn.Module, real: ShardImages, adapted: ShardImages, vanilla: ShardImages,
                   device: torch.device | str = "cpu",
                   compute: ComputeParams = ComputeParams()) -> tuple[dict, np.ndarray]:
    """Classifiability of the adapted images (all classes, and the client's own), and vanilla-vs-adapted
    Fréchet distance to the client's real images, class by class over the classes it holds (``class_frechet``);
    and the adapted images' accuracy per class, from the same predictions."""
    own = np.flatnonzero(real.class_counts() > 0)
    actual, predicted = adapted.labels.numpy(), predicted_classes(model, adapted, device, compute)
    own_rows = np.isin(actual, own)
    van = vanilla.of_classes(own)
    real_f, real_l = embed(model, real, device, compute).numpy(), real.labels.numpy()
    mine = adapted.subset(np.flatnonzero(own_rows))
    fd_vanilla = class_frechet(real_f, real_l, embed(model, van, device, compute).numpy(), van.labels.numpy())
    fd_adapted = class_frechet(real_f, real_l, embed(model, mine, device, compute).numpy(), mine.labels.numpy())
    measured = fd_vanilla is not None
    return {
        "classifiability": round(accuracy(actual, predicted), 4),
        "classifiability_own_classes": round(accuracy(actual[own_rows], predicted[own_rows]), 4),
        "classifiability_own_classes_vanilla": round(
            accuracy(van.labels.numpy(), predicted_classes(model, van, device, compute)), 4),
        "frechet_vanilla": round(fd_vanilla, 3) if measured else None,
        "frechet_adapted": round(fd_adapted, 3) if measured else None,
        "adapted_closer": bool(fd_adapted < fd_vanilla) if measured else None,
        "own_classes": [int(k) for k in own],
        "real_images": len(real),
        "synthetic_images": len(adapted),
        "correct": int((actual == predicted).sum()),
    }, class_accuracy(actual, predicted, len(adapted.class_names))


def quality_report(per_client: dict[str, dict], per_class: list[np.ndarray], class_names: list[str]) -> dict:
    """metrics/generator.json (stage generator_quality): totals over the clients first, then one entry each.
    ``per_client``/``per_class``: what :func:`client_quality` returned for each client."""
    total = sum(q["synthetic_images"] for q in per_client.values())
    correct = sum(q["correct"] for q in per_client.values())
    measured = [q for q in per_client.values() if q["adapted_closer"] is not None]
    return {
        "classifiability": round(correct / total, 4),
        "frechet": "per class",  # how the distances were taken (runs before it pooled the client's classes)
        "clients_adapted_closer": sum(q["adapted_closer"] for q in measured),
        "clients": len(per_client),
        "clients_measured": len(measured),  # those holding a class of MIN_CLASS_IMAGES real images or more
        "frechet_vanilla_mean": _mean([q["frechet_vanilla"] for q in measured]),
        "frechet_adapted_mean": _mean([q["frechet_adapted"] for q in measured]),
        "classifiability_per_class": {n: round(float(a), 4) for n, a in zip(class_names, np.mean(per_class, axis=0))},
        "per_client": per_client,
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None
