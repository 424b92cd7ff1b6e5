"""Split the clients' training pool over M clients: Dirichlet label skew (NIID-Bench), IID, pathological.

All functions take labels and return one sorted index array per client; they never touch global random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from regl.core.errors import ReglError
from regl.core.params import Section
from regl.data.sampling import apportion


class PartitionParams(Section):
    scheme: Literal["dirichlet", "iid", "pathological"] = "dirichlet"
    seed: int = Field(0, ge=0)
    min_size: int = 10
    max_tries: int = Field(1000, ge=1)
    classes_per_client: int = Field(2, ge=1)
    local_test_size: int = Field(200, ge=0)

    @field_validator("min_size")
    @classmethod
    def _no_empty_clients(cls, n: int) -> int:
        # A client without images has nothing to train on (and nothing to personalize or judge): empty clients
        # are refused here, before any work, rather than skipped later.
        if n < 1:
            raise ValueError("must be >= 1: every client needs images to train on; if the split cannot give "
                             "each client that many, raise beta, use fewer clients or a larger training pool")
        return n


@dataclass(frozen=True)
class PartitionResult:
    indices: list[np.ndarray]  # per client, sorted
    tries: int  # Dirichlet draws until min_size held (1 for the other schemes)


def dirichlet(labels: np.ndarray, num_clients: int, beta: float, min_size: int, max_tries: int,
              rng: np.random.Generator, num_classes: int | None = None) -> PartitionResult:
    """NIID-Bench's Dirichlet split (docs/stages.md, "partition").

    For each class in order: draw p ~ Dir(beta), zero the share of clients already holding >= N/M samples,
    renormalise, cut the class's shuffled indices at the cumulative proportions. Redraw the whole split until
    every client holds at least ``min_size`` samples, at most ``max_tries`` times.
    """
    n = len(labels)
    k = int(num_classes or (labels.max() + 1 if n else 0))
    if num_clients * min_size > n:
        raise ReglError(f"params.yaml: clients: {num_clients} clients x partition.min_size {min_size} "
                        f"= {num_clients * min_size} images needed, the training pool holds {n}")
    by_class = [np.flatnonzero(labels == c) for c in range(k)]
    cap = n / num_clients
    for attempt in range(1, max_tries + 1):
        sizes = np.zeros(num_clients, dtype=np.int64)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            idx = rng.permutation(members)
            p = rng.dirichlet(np.full(num_clients, beta))
            p = np.where(sizes < cap, p, 0.0)
            total = p.sum()
            if not np.isfinite(total) or total <= 0:
                p = (sizes < cap).astype(np.float64)  # every share underflowed: spread over open clients
                total = p.sum()
            cuts = (np.cumsum(p / total) * len(idx)).astype(np.int64)[:-1]
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
                sizes[client] += len(piece)
        if sizes.min() >= min_size:
            return PartitionResult([np.sort(np.concatenate(p)) for p in parts], attempt)
    raise ReglError(f"params.yaml: partition.min_size = {min_size} not reached in partition.max_tries = {max_tries} "
                    f"Dirichlet draws with beta = {beta} over {num_clients} clients and {k} classes; "
                    f"lower partition.min_size, raise beta or use fewer clients")


def iid(labels: np.ndarray, num_clients: int, min_size: int, rng: np.random.Generator) -> PartitionResult:
    """A uniform shuffle cut into near-equal parts."""
    n = len(labels)
    if num_clients * max(min_size, 1) > n:
        raise ReglError(f"params.yaml: clients: {num_clients} clients need at least "
                        f"{num_clients * max(min_size, 1)} images (partition.min_size {min_size}), the pool holds {n}")
    return PartitionResult([np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)], 1)


def pathological(labels: np.ndarray, num_clients: int, classes_per_client: int, min_size: int,
                 rng: np.random.Generator, num_classes: int | None = None) -> PartitionResult:
    """Each client holds ``classes_per_client`` classes; a class is shared evenly by the clients holding it.

    Classes are dealt round-robin from a seeded permutation, so every class goes to some client.
    """
    k = int(num_classes or labels.max() + 1)
    if classes_per_client > k:
        raise ReglError(f"params.yaml: partition.classes_per_client = {classes_per_client}: must be <= {k} "
                        f"(the number of classes)")
    if num_clients * classes_per_client < k:
        raise ReglError(f"params.yaml: partition.classes_per_client = {classes_per_client}: with {num_clients} "
                        f"clients, must be >= {-(-k // num_clients)} so that every class has a holder")
    order = rng.permutation(k)
    held = [[int(order[(c * classes_per_client + j) % k]) for j in range(classes_per_client)]
            for c in range(num_clients)]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls in range(k):
        holders = [c for c in range(num_clients) if cls in held[c]]
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for client, piece in zip(holders, np.array_split(idx, len(holders))):
            parts[client].append(piece)
    result = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    smallest = min(len(r) for r in result)
    if smallest < min_size:
        raise ReglError(f"params.yaml: partition.min_size = {min_size}: the pathological split gives a client "
                        f"only {smallest} images; lower partition.min_size or use fewer clients")
    return PartitionResult(result, 1)


def local_test_view(test_labels: np.ndarray, client_counts: np.ndarray, size: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Test indices whose label proportions follow the client's training label counts (``size`` in total,
    fewer where the test split runs out of a class)."""
    want = apportion(client_counts, size)
    chosen = []
    for cls, n in enumerate(want):
        members = np.flatnonzero(test_labels == cls)
        if n and len(members):
            chosen.append(rng.choice(members, size=min(int(n), len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def coverage_classes(counts: np.ndarray, share: float = 0.95) -> int:
    """The smallest number of classes that together hold ``share`` of a client's images."""
    total = counts.sum()
    if total == 0:
        return 0
    cumulative = np.cumsum(np.sort(counts)[::-1]) / total
    return int(np.searchsorted(cumulative, share - 1e-12) + 1)


def split_clients(labels: np.ndarray, num_classes: int, num_clients: int, beta: float, scheme: str,
                  min_size: int, max_tries: int, classes_per_client: int,
                  rng: np.random.Generator) -> PartitionResult:
    """Dispatch on ``partition.scheme``."""
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients, beta, min_size, max_tries, rng, num_classes)
    if scheme == "iid":
        return iid(labels, num_clients, min_size, rng)
    if scheme == "pathological":
        return pathological(labels, num_clients, classes_per_client, min_size, rng, num_classes)
    raise ReglError(f"params.yaml: partition.scheme = {scheme!r}: must be dirichlet, iid or pathological")


def summary(client_ids: list[int], counts: np.ndarray, test_sizes: list[int], class_names: list[str],
            scheme: str, beta: float, tries: int) -> dict:
    """The partition metrics: headline figures first, then per-client sizes and class counts."""
    sizes = counts.sum(axis=1)
    cover = [coverage_classes(row) for row in counts]
    return {
        "scheme": scheme,
        "beta": beta,
        "num_clients": len(client_ids),
        "draws": tries,
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "classes_95_median": float(np.median(cover)),
        "classes_95_mean": round(float(np.mean(cover)), 4),
        "clients": {
            str(c): {
                "size": int(sizes[i]),
                "classes_95": cover[i],
                "local_test_size": int(test_sizes[i]),
                "class_counts": {name: int(n) for name, n in zip(class_names, counts[i])},
            }
            for i, c in enumerate(client_ids)
        },
    }
