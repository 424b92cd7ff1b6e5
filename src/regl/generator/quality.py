"""How good the synthetic images are: classifiability by the reference classifier, and the Fréchet distance
between the reference classifier's penultimate features of a client's real images and of synthetic ones."""

from __future__ import annotations

import numpy as np
import torch

from regl.evaluation import confusion_matrix, per_class_accuracy
from regl.shards import Shard
from regl.tensors import shard_tensors
from regl.training import embed, predict


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


def of_classes(shard: Shard, classes: np.ndarray) -> Shard:
    return shard.take(np.flatnonzero(np.isin(shard.labels, classes)))


@torch.no_grad()
def client_quality(model: torch.nn.Module, real: Shard, adapted: Shard,
                   vanilla: Shard) -> tuple[dict, np.ndarray]:
    """Classifiability of the adapted images (all classes, and the client's own), and vanilla-vs-adapted
    Fréchet distance to the client's real images, measured on the classes the client holds; and the adapted
    images' accuracy per class, from the same predictions."""
    own = np.flatnonzero(real.class_counts() > 0)
    x, y = shard_tensors(adapted)
    predicted = predict(model, x).argmax(1)
    correct = (predicted == y).numpy()
    own_rows = np.isin(adapted.labels, own)
    van = of_classes(vanilla, own)
    vx, vy = shard_tensors(van)
    real_f = embed(model, shard_tensors(real)[0]).numpy()
    fd_vanilla = frechet_distance(real_f, embed(model, vx).numpy())
    fd_adapted = frechet_distance(real_f, embed(model, x[torch.from_numpy(own_rows)]).numpy())
    per_class = per_class_accuracy(confusion_matrix(y.numpy(), predicted.numpy(), len(adapted.class_names)))
    return {
        "classifiability": round(float(correct.mean()), 4),
        "classifiability_own_classes": round(float(correct[own_rows].mean()), 4),
        "classifiability_own_classes_vanilla": round(float((predict(model, vx).argmax(1) == vy).float().mean()), 4),
        "frechet_vanilla": round(fd_vanilla, 3),
        "frechet_adapted": round(fd_adapted, 3),
        "adapted_closer": bool(fd_adapted < fd_vanilla),
        "own_classes": [int(k) for k in own],
        "real_images": len(real),
        "synthetic_images": len(adapted),
        "correct": int(correct.sum()),
    }, per_class
