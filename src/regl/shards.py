"""The one Parquet reader/writer for image shards (docs/data-formats.md).

Columns: ``image`` (struct of PNG ``bytes`` and ``path``, the layout of the Hugging Face ``Image`` feature),
``label`` (int64), ``source`` (``real``/``synthetic``), ``id`` (provenance of each image) and any extra
provenance columns (``client``, ``prompt``). The file's key-value metadata holds the class names twice: under
``regl`` for us and under ``huggingface`` as a ``ClassLabel`` so ``datasets.load_dataset("parquet", ...)``
yields PIL images and named labels.

Writing is deterministic (fixed row order, fixed row-group size, no timestamps) and atomic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regl.atomic import atomic_file
from regl.errors import ReglError
from regl.images import decode_many

ROW_GROUP_SIZE = 4096
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@dataclass
class Shard:
    """Images (PNG bytes), integer labels and per-row provenance, plus the dataset's class names."""

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)  # id, source, client, prompt, ...
    meta: dict[str, Any] = field(default_factory=dict)  # file-level provenance

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        for name, values in self.columns.items():
            if len(values) != len(self.labels):
                raise ValueError(f"column {name} differs in length")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int] | np.ndarray) -> "Shard":
        idx = np.asarray(indices, dtype=np.int64)
        return Shard(
            images=[self.images[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            columns={k: [v[i] for i in idx] for k, v in self.columns.items()},
            meta=dict(self.meta),
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))

    def pixels(self, channels: int | None = None) -> np.ndarray:
        """All images decoded to one (N, H, W, C) uint8 array."""
        return decode_many(self.images, channels)


def _hf_features(shard: Shard) -> dict[str, Any]:
    feats: dict[str, Any] = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": list(shard.class_names)},
    }
    for name, values in shard.columns.items():
        dtype = "int64" if values and isinstance(values[0], (int, np.integer)) else "string"
        feats[name] = {"dtype": dtype, "_type": "Value"}
    return feats


def to_table(shard: Shard) -> pa.Table:
    image = pa.array([{"bytes": b, "path": None} for b in shard.images], type=_IMAGE_TYPE)
    arrays = {"image": image, "label": pa.array(shard.labels, type=pa.int64())}
    for name, values in shard.columns.items():
        arrays[name] = pa.array(values)
    table = pa.table(arrays)
    metadata = {
        "regl": json.dumps({"class_names": list(shard.class_names), **shard.meta}, sort_keys=True),
        "huggingface": json.dumps({"info": {"features": _hf_features(shard)}}, sort_keys=True),
    }
    return table.replace_schema_metadata(metadata)


def write_shard(path: str | Path, shard: Shard) -> None:
    """Write ``shard`` to ``path`` atomically; the same shard always gives the same bytes."""
    with atomic_file(path) as tmp:
        pq.write_table(to_table(shard), tmp, row_group_size=ROW_GROUP_SIZE, compression="snappy")


def read_shard(path: str | Path) -> Shard:
    """Read a shard written by :func:`write_shard`."""
    path = Path(path)
    if not path.is_file():
        raise ReglError(f"{path}: shard not found (run the stage that writes it, e.g. `dvc repro`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReglError(f"{path}: not a readable Parquet file ({exc})") from None
    meta = table.schema.metadata or {}
    if b"regl" not in meta:
        raise ReglError(f"{path}: not a regl shard (no 'regl' metadata); import it with prepare.source=parquet:{path}")
    info = json.loads(meta[b"regl"])
    class_names = info.pop("class_names")
    images = table.column("image").combine_chunks().field("bytes").to_pylist()
    labels = table.column("label").to_numpy()
    columns = {n: table.column(n).to_pylist() for n in table.column_names if n not in ("image", "label")}
    return Shard(images=images, labels=labels, class_names=class_names, columns=columns, meta=info)


def read_class_names(path: str | Path) -> list[str]:
    """The class names of a shard, from its metadata alone (no image data read)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[b"regl"])["class_names"]


def read_class_counts(path: str | Path) -> np.ndarray:
    """Images per class of a shard, from its label column and metadata alone (no image bytes read)."""
    labels = pq.read_table(path, columns=["label"]).column("label").to_numpy()
    return np.bincount(labels, minlength=len(read_class_names(path)))
