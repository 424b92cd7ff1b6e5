"""The oracle generator, an ablation and not the method: a client's synthetic shard filled with real images from
the public pool (`generate.oracle = true`), ``images_per_class`` of every class, the same count a generator
makes. What ReGL reaches with these is the ceiling any generator can reach on this data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regl.core.errors import ReglError
from regl.generator.sample import GenerateParams
from regl.data.naming import client_name
from regl.core.seeding import rng
from regl.data.shards import Shard, iter_rows, read_labels, write_shard


def oracle_rows(labels: np.ndarray, num_classes: int, g: GenerateParams, client: int, where: Path) -> np.ndarray:
    """Rows of the public pool, ``images_per_class`` of each class without replacement, drawn by (seed, client,
    class)."""
    rows = []
    for k in range(num_classes):
        pool = np.flatnonzero(labels == k)
        if len(pool) < g.images_per_class:
            raise ReglError(f"params.yaml: generate.oracle = true needs generate.images_per_class = "
                            f"{g.images_per_class} public images of every class, {where} holds {len(pool)} of "
                            f"class {k}; lower images_per_class or raise prepare.public_fraction")
        rows.append(np.sort(rng(g.seed, "oracle", client, k).choice(pool, g.images_per_class, replace=False)))
    return np.concatenate(rows)


def write_oracle(public: Path, out: Path, g: GenerateParams, client: int) -> Shard:
    """Write the client's oracle shard to ``out``; returns it."""
    labels, names = read_labels(public)
    rows = oracle_rows(labels, len(names), g, client, public)
    pieces = list(iter_rows(public, np.sort(rows)))  # iter_rows takes (and yields) the rows in file order
    images = [img for p in pieces for img in p.images]
    got = np.concatenate([p.labels for p in pieces])
    order = np.argsort(got, kind="stable")  # class by class, as a generator's shard
    within = np.concatenate([np.arange(g.images_per_class)] * len(names))
    shard = Shard(images=[images[i] for i in order], labels=got[order], class_names=names,
                  columns={"source": ["public"] * len(order),
                           "id": [f"{client_name(client)}/oracle/{names[k]}/{j}" for k, j in zip(got[order], within)],
                           "client": [client] * len(order), "prompt": [""] * len(order)},
                  meta={"client": client, "split": "oracle", "lora_scale": 0.0})
    write_shard(out, shard)
    return shard


def oracle_grid(shard: Shard) -> list[tuple[str, None, np.ndarray, np.ndarray]]:
    """The sample grid's rows: each class's first oracle image, in both the vanilla and the adapted column."""
    first = shard.take([int(np.flatnonzero(shard.labels == k)[0]) for k in range(len(shard.class_names))]).pixels()
    return [(name, None, first[k], first[k]) for k, name in enumerate(shard.class_names)]
