"""A client's images: its real shard, plus its synthetic shard where a stage asks for it, as one dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regl.core.errors import ReglError
from regl.data.imageset import CacheBudget, Images, Part, open_images
from regl.data.naming import client_file
from regl.data.shards import read_labels


@dataclass
class ClientData:
    client: int
    images: Images  # the real images first, then the synthetic ones
    num_real: int
    num_synthetic: int = 0


def client_files(clients: list[int], clients_dir: Path, synthetic_dir: Path, synthetic: bool,
                 key: str) -> list[Path]:
    """The shards a stage reads, checked to exist (and a client's own shard to hold rows) before any work;
    ``key`` names the param that asked for synthetic data, for the error message."""
    files = []
    for cid in clients:
        real = client_file(clients_dir, cid)
        if not real.is_file():
            raise ReglError(f"{real}: client shard missing; run the partition stage (dvc repro partition)")
        if len(read_labels(real)[0]) == 0:
            raise empty_shard(real)
        files.append(real)
        if synthetic:
            syn = client_file(synthetic_dir, cid)
            if not syn.is_file():
                raise ReglError(f"params.yaml: {key} = true but {syn} is missing; run the generate stages "
                                f"(dvc repro) or set {key}=false")
            files.append(syn)
    return files


def empty_shard(path: Path) -> ReglError:
    return ReglError(f"{path}: holds no rows; remake it with dvc repro partition")


def load_client(cid: int, clients_dir: Path, synthetic_dir: Path, synthetic: bool, channels: int,
                only_held_classes: bool = False, budget: CacheBudget | None = None) -> ClientData:
    """Real images, then (if ``synthetic``) synthetic ones - all classes, or only those the client holds;
    decoded into memory while ``budget`` lasts, streamed otherwise (``regl.data.imageset``)."""
    real = client_file(clients_dir, cid)
    parts = [Part(real)]
    if synthetic:
        syn = client_file(synthetic_dir, cid)
        rows = None
        if only_held_classes:
            rows = np.flatnonzero(np.isin(read_labels(syn)[0], np.unique(read_labels(real)[0])))
        parts.append(Part(syn, rows))
    images = open_images(parts, channels, budget)
    num_real = int((images.store.src == 0).sum())
    if num_real == 0:  # a node loads its shard here without client_files' check (the Flower ClientApp)
        raise empty_shard(real)
    return ClientData(cid, images, num_real, len(images) - num_real)
