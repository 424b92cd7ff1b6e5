"""The one Parquet reader/writer for image shards (docs/data-formats.md).

Columns: ``image`` (struct of PNG ``bytes`` and ``path``, the layout of the Hugging Face ``Image`` feature),
``label`` (int64), ``source`` (``real``/``synthetic``), ``id`` (provenance of each image) and any extra
provenance columns (``client``, ``prompt``). The file's key-value metadata holds the class names twice: under
``regl`` for us and under ``huggingface`` as a ``ClassLabel`` so ``datasets.load_dataset("parquet", ...)``
yields PIL images and named labels.

Writing is deterministic (fixed row order, fixed row-group rule, no timestamps) and atomic, and streams:
:class:`ShardWriter` takes rows in pieces and holds at most one row group, and :func:`iter_rows` reads a file
row group by row group, so a shard of any size goes through in bounded memory.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regl.core.atomic import atomic_file
from regl.core.errors import ReglError
from regl.data.images import decode_many

# A row group closes at ROW_GROUP_SIZE rows or once its images hold ROW_GROUP_BYTES, whichever comes first: 4096
# of the embedded default's 32 px PNGs take 3 MB, while 4096 photos at 224 px would take 400 MB. Reading a row
# group takes about twice its bytes, so the byte cap is what bounds a reader's memory at scale. The rule
# depends only on the rows, so the same rows give the same row groups however they are handed to the writer.
ROW_GROUP_SIZE = 4096
ROW_GROUP_BYTES = 8 << 20
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@dataclass
class Shard:
    """Images (PNG bytes), integer labels and per-row provenance, plus the dataset's class names."""

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)  # id, source, client, prompt, ...
    meta: dict[str, Any] = field(default_factory=dict)  # file-level provenance
    # where the rows came from, for error messages: the file, and each row's row number in it (None: 0, 1, ...)
    origin: str | None = field(default=None, compare=False)
    rows: np.ndarray | None = field(default=None, compare=False, repr=False)

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
            origin=self.origin,
            rows=idx if self.rows is None else self.rows[idx],
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))

    def pixels(self, channels: int | None = None) -> np.ndarray:
        """All images decoded to one (N, H, W, C) uint8 array; an image that does not decode is a
        :class:`ReglError` naming the file and row."""
        return decode_many(self.images, channels, self.where)

    def where(self, i: int) -> str:
        """Image ``i`` for an error message: ``data/clients/client_0.parquet: row 12 (id fashion-mnist/train/5)``."""
        row = int(i if self.rows is None else self.rows[i])
        ids = self.columns.get("id")
        named = f" (id {ids[i]})" if ids is not None and ids[i] is not None else ""
        return f"{self.origin or 'shard'}: row {row}{named}"


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


def _row_group_end(sizes: Sequence[int]) -> int | None:
    """Rows in the next full row group of rows whose image sizes are ``sizes``; None while it is not full."""
    if len(sizes) >= ROW_GROUP_SIZE:
        sizes = sizes[:ROW_GROUP_SIZE]
    full = np.flatnonzero(np.cumsum(sizes, dtype=np.int64) >= ROW_GROUP_BYTES)
    if full.size:
        return int(full[0]) + 1
    return len(sizes) if len(sizes) == ROW_GROUP_SIZE else None


class ShardWriter:
    """Write a shard in pieces: ``write`` takes rows, full row groups go to disk as they fill, ``close`` puts the
    file in place atomically (an error inside ``with`` leaves the old file or none). It holds at most one row
    group, and writes the same bytes as one :func:`write_shard` of all the rows."""

    def __init__(self, path: str | Path, class_names: list[str], meta: dict[str, Any] | None = None):
        self.path, self.class_names, self.meta = Path(path), list(class_names), dict(meta or {})
        self._pending: Shard | None = None
        self._writer: pq.ParquetWriter | None = None
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_file(self.path))
        self.rows = 0

    def write(self, shard: Shard) -> None:
        if self._pending is not None and list(shard.columns) != list(self._pending.columns):
            raise ValueError(f"{self.path}: columns {list(shard.columns)} after {list(self._pending.columns)}")
        piece = Shard(list(shard.images), shard.labels, self.class_names,
                      {k: list(v) for k, v in shard.columns.items()}, self.meta)
        if self._pending is None or not len(self._pending):
            self._pending = piece
        else:
            p = self._pending
            p.images += piece.images
            p.labels = np.concatenate([p.labels, piece.labels])
            for k in p.columns:
                p.columns[k] += piece.columns[k]
        self.rows += len(piece)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        p = self._pending
        while p is not None and len(p):
            end = _row_group_end([len(b) for b in p.images[:ROW_GROUP_SIZE]])
            if end is None:
                if not final:
                    return
                end = len(p)
            self._write_table(to_table(p.take(np.arange(end))))
            p = self._pending = p.take(np.arange(end, len(p)))
            p.rows = None  # pending rows are appended to: no row numbers to keep in step

    def _write_table(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="snappy")
        elif not table.schema.equals(self._writer.schema, check_metadata=False):
            table = table.cast(self._writer.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_SIZE)

    def close(self) -> None:
        self._flush(final=True)
        if self._writer is None:  # no rows: an empty file with the columns of the last piece written
            empty = self._pending or Shard([], [], self.class_names, meta=self.meta)
            self._write_table(to_table(empty))
        self._writer.close()
        self._stack.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
            return
        if self._writer is not None:
            self._writer.close()
        self._stack.__exit__(kind, exc, tb)


def write_shard(path: str | Path, shard: Shard) -> None:
    """Write ``shard`` to ``path`` atomically; the same shard always gives the same bytes."""
    with ShardWriter(path, shard.class_names, shard.meta) as writer:
        writer.write(shard)


def write_pieces(path: str | Path, class_names: list[str], meta: dict[str, Any], pieces: Iterable[Shard]) -> int:
    """Write the rows of ``pieces``, in order, as one shard (see :class:`ShardWriter`); returns the row count."""
    with ShardWriter(path, class_names, meta) as writer:
        for piece in pieces:
            writer.write(piece)
    return writer.rows


_REWRITE = "re-run the stage that writes it (dvc repro)"


def _missing(path: Path) -> ReglError:
    return ReglError(f"{path}: shard not found (run the stage that writes it, e.g. `dvc repro`)")


def _shard_info(path: Path, schema: pa.Schema) -> dict[str, Any]:
    """The file's ``regl`` metadata, checked: a JSON object whose ``class_names`` is a non-empty list of strings."""
    meta = schema.metadata or {}
    if b"regl" not in meta:
        raise ReglError(f"{path}: not a regl shard (no 'regl' metadata); import it with prepare.source=parquet:{path}")
    try:
        info = json.loads(meta[b"regl"])
    except (ValueError, UnicodeDecodeError):
        info = None
    names = info.get("class_names") if isinstance(info, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ReglError(f"{path}: the 'regl' metadata holds no class names (a non-empty list of strings under "
                        f"'class_names'); {_REWRITE}")
    return info


def _check_columns(path: Path, schema: pa.Schema) -> None:
    """``image``: a struct with binary ``bytes`` (or plain binary); ``label``: integers."""
    missing = [c for c in ("image", "label") if c not in schema.names]
    if missing:
        raise ReglError(f"{path}: no column {', '.join(map(repr, missing))} (has {schema.names}); a shard needs "
                        f"'image' (PNG bytes) and 'label' (integer class index); {_REWRITE}")
    image = schema.field("image").type
    if pa.types.is_struct(image):
        ok = image.get_field_index("bytes") >= 0 and pa.types.is_binary(image.field("bytes").type)
    else:
        ok = pa.types.is_binary(image)
    if not ok:
        raise ReglError(f"{path}: column 'image' is {image}, expected a struct with binary 'bytes' (PNG); {_REWRITE}")
    if not pa.types.is_integer(schema.field("label").type):
        raise ReglError(f"{path}: column 'label' is {schema.field('label').type}, expected integer class indices; "
                        f"{_REWRITE}")


def _read(path: Path, read, **kwargs):
    """``read(path, **kwargs)`` (a pyarrow reader) with a missing or unreadable file as one line."""
    if not path.is_file():
        raise _missing(path)
    try:
        return read(path, **kwargs)
    except (pa.ArrowException, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise ReglError(f"{path}: not a readable Parquet file ({detail}); {_REWRITE}") from None


def _labels(path: Path, label: pa.ChunkedArray, num_classes: int) -> np.ndarray:
    """The label column as int64 class indices, checked: no nulls, every one below ``num_classes``."""
    if label.null_count:
        row = label.to_pylist().index(None)
        raise ReglError(f"{path}: row {row}: label is null; every image needs a class index; {_REWRITE}")
    labels = label.to_numpy().astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ReglError(f"{path}: row {bad[0]}: label {labels[bad[0]]} is not a class index 0..{num_classes - 1} "
                        f"of its {num_classes} class names; {_REWRITE}")
    return labels


def _to_shard(path: Path, table: pa.Table, info: dict[str, Any], rows: np.ndarray | None = None) -> Shard:
    class_names = info["class_names"]
    image = table.column("image").combine_chunks()
    images = (image.field("bytes") if pa.types.is_struct(image.type) else image).to_pylist()
    labels = _labels(path, table.column("label"), len(class_names))
    columns = {n: table.column(n).to_pylist() for n in table.column_names if n not in ("image", "label")}
    meta = {k: v for k, v in info.items() if k != "class_names"}
    return Shard(images=images, labels=labels, class_names=list(class_names), columns=columns, meta=meta,
                 origin=str(path), rows=rows)


def read_shard(path: str | Path) -> Shard:
    """Read a shard written by :func:`write_shard`; anything else is a one-line :class:`ReglError`."""
    path = Path(path)
    table = _read(path, pq.read_table)
    info = _shard_info(path, table.schema)
    _check_columns(path, table.schema)
    return _to_shard(path, table, info)


def iter_rows(path: str | Path, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[Shard]:
    """The rows ``indices`` (sorted; None: all) of a shard, in order, one piece per row group read: memory holds
    one row group at a time. Each piece knows its rows' numbers in the file (for error messages)."""
    path = Path(path)
    file = _read(path, pq.ParquetFile)
    info = _shard_info(path, file.schema_arrow)
    _check_columns(path, file.schema_arrow)
    wanted = None if indices is None else np.asarray(indices, dtype=np.int64)
    if wanted is not None and wanted.size and (np.any(np.diff(wanted) <= 0) or wanted[0] < 0
                                               or wanted[-1] >= file.metadata.num_rows):
        raise ValueError(f"{path}: row indices must be sorted, distinct and below {file.metadata.num_rows}")
    start, done = 0, False
    for group in range(file.num_row_groups):
        n = file.metadata.row_group(group).num_rows
        if wanted is None:
            local = np.arange(n)
        else:
            lo, hi = np.searchsorted(wanted, [start, start + n])
            local = wanted[lo:hi] - start
        if local.size:
            table = file.read_row_group(group)
            if local.size < n:
                table = table.take(pa.array(local))
            yield _to_shard(path, table, info, rows=local + start)
            done = True
        start += n
    if not done:  # no rows: one empty piece, so a writer still learns the columns
        yield _to_shard(path, file.schema_arrow.empty_table(), info, rows=np.zeros(0, np.int64))


def read_labels(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """A shard's labels and class names, from its label column and metadata alone (no image bytes read)."""
    path = Path(path)
    schema = _read(path, pq.read_schema)
    names = _shard_info(path, schema)["class_names"]
    _check_columns(path, schema)
    return _labels(path, _read(path, pq.read_table, columns=["label"]).column("label"), len(names)), names


def read_meta(path: str | Path) -> dict[str, Any]:
    """A shard's file-level provenance (its ``regl`` metadata without the class names)."""
    path = Path(path)
    info = _shard_info(path, _read(path, pq.read_schema))
    return {k: v for k, v in info.items() if k != "class_names"}


def read_class_names(path: str | Path) -> list[str]:
    """The class names of a shard, from its metadata alone (no image data read)."""
    path = Path(path)
    return _shard_info(path, _read(path, pq.read_schema))["class_names"]


def read_class_counts(path: str | Path) -> np.ndarray:
    """Images per class of a shard, from its label column and metadata alone (no image bytes read)."""
    labels, names = read_labels(path)
    return np.bincount(labels, minlength=len(names))
