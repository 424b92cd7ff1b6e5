"""A client's images as tensors: its real shard, plus its synthetic shard where a stage asks for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from regl.errors import ReglError
from regl.naming import client_file
from regl.shards import read_shard
from regl.tensors import shard_tensors


@dataclass
class ClientData:
    client: int
    x: torch.Tensor
    y: torch.Tensor
    num_real: int
    num_synthetic: int = 0


def client_files(clients: list[int], clients_dir: Path, synthetic_dir: Path, synthetic: bool,
                 key: str) -> list[Path]:
    """The shards a stage reads, checked to exist before any work; ``key`` names the param that asked for
    synthetic data, for the error message."""
    files = []
    for cid in clients:
        real = client_file(clients_dir, cid)
        if not real.is_file():
            raise ReglError(f"{real}: client shard missing; run the partition stage (dvc repro partition)")
        files.append(real)
        if synthetic:
            syn = client_file(synthetic_dir, cid)
            if not syn.is_file():
                raise ReglError(f"params.yaml: {key} = true but {syn} is missing; run the generate stages "
                                f"(dvc repro) or set {key}=false")
            files.append(syn)
    return files


def load_client(cid: int, clients_dir: Path, synthetic_dir: Path, synthetic: bool, channels: int,
                only_held_classes: bool = False) -> ClientData:
    """Real images, then (if ``synthetic``) synthetic ones - all classes, or only those the client holds."""
    real = read_shard(client_file(clients_dir, cid))
    x, y = shard_tensors(real, channels)
    if not synthetic:
        return ClientData(cid, x, y, len(y))
    syn = read_shard(client_file(synthetic_dir, cid))
    if only_held_classes:
        syn = syn.take(np.flatnonzero(np.isin(syn.labels, np.flatnonzero(real.class_counts()))))
    xs, ys = shard_tensors(syn, channels)
    return ClientData(cid, torch.cat([x, xs]), torch.cat([y, ys]), len(y), len(ys))
