"""Seeded, stratified selection of indices by label (test splits, the public pool, size caps)."""

from __future__ import annotations

import numpy as np


def apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainder, ties to lower index)."""
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def stratified_counts(labels: np.ndarray, total: int, num_classes: int) -> np.ndarray:
    """How many of each class a stratified sample of ``total`` items takes (never more than a class has)."""
    available = np.bincount(labels, minlength=num_classes)
    return np.minimum(apportion(available, min(total, len(labels))), available)


def stratified_pick(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices: ``counts[k]`` drawn without replacement from the items of class k."""
    chosen = []
    for k, n in enumerate(counts):
        if n:
            members = np.flatnonzero(labels == k)
            chosen.append(rng.choice(members, size=int(n), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, num_classes: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken): ``fraction`` of each class taken out, stratified, the rest kept; both sorted."""
    taken = stratified_pick(labels, stratified_counts(labels, round(fraction * len(labels)), num_classes), rng)
    kept = np.setdiff1d(np.arange(len(labels)), taken, assume_unique=True)
    return kept, taken
