"""The one dataset type over Parquet image shards (real and synthetic): images decoded per batch.

``ShardImages`` is a torch ``Dataset`` whose batches are uint8 pixels (N, H, W, C) and int64 labels; every
stage that trains or scores a classifier reads its images through it, and ``batches`` turns a batch order into
float batches on a device (a ``DataLoader`` with ``loader_workers`` workers, pinned memory on CUDA, then
``tensors.to_float`` per batch).

Where the pixels live is the one choice, made when a dataset is opened and bounded explicitly:

* **in memory**: the decoded uint8 pixels, when they fit in what is left of the stage's ``CacheBudget``
  (``cache_mb``); the embedded default's 12,000 images at 32 px take 12 MB;
* **streamed**: otherwise. Opening copies the images' PNG bytes, one row group at a time
  (``shards.iter_rows``), into a temporary spill file and keeps only where each one is (two int64s an image); a
  batch reads its rows back with ``os.pread`` (the page cache, not this process, holds the file) and decodes
  them. Memory is then one batch of decoded images per loader worker (times the prefetch), whatever the number
  of images.

Both give the same pixels for the same rows, so a run gives the same bytes whichever path its data takes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from regl.core.errors import ReglError
from regl.data.images import DECODE_ERRORS, decode_png, undecodable
from regl.data.shards import iter_rows, read_class_names, read_labels
from regl.data.tensors import to_float


class CacheBudget:
    """How many bytes of decoded uint8 pixels a stage may keep in memory, over all the datasets it opens."""

    def __init__(self, mb: float):
        self.left = mb * 2**20

    def take(self, nbytes: int) -> bool:
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


@dataclass(frozen=True)
class Part:
    """Rows of one shard: all of them (``rows`` None) or those listed, in that order."""

    path: Path
    rows: np.ndarray | None = None


class _Spill:
    """PNG bytes in a temporary file, read back by position. Loader workers (forked copies) reopen it by path;
    the process that wrote it deletes it when the dataset goes."""

    def __init__(self, n: int) -> None:
        fd, self.path = tempfile.mkstemp(prefix="regl-images-")
        self._file = os.fdopen(fd, "wb")
        self.start = np.zeros(n, dtype=np.int64)
        self.length = np.zeros(n, dtype=np.int64)
        self._end, self._owner, self._fd, self._pid = 0, os.getpid(), None, -1

    def write(self, positions: np.ndarray, blobs: Sequence[bytes]) -> None:
        for i, b in zip(positions, blobs):
            self._file.write(b)
            self.start[i], self.length[i] = self._end, len(b)
            self._end += len(b)

    def close(self) -> None:
        self._file.close()
        self._file = None

    def read(self, i: int) -> bytes:
        if self._pid != os.getpid():  # first read in this process
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, int(self.length[i]), int(self.start[i]))

    def __getstate__(self) -> dict:  # a spawned worker: reopen by path
        return {**self.__dict__, "_fd": None, "_pid": -1, "_file": None}

    def __del__(self) -> None:
        try:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            if self._owner == os.getpid():
                os.unlink(self.path)
        except (OSError, AttributeError, TypeError):  # already gone, or the interpreter is shutting down
            pass


class _Store:
    """The pixels of every row of a dataset: a decoded uint8 array, or a spill file decoded per batch."""

    def __init__(self, parts: list[Part], channels: int | None, budget: CacheBudget):
        self.files = [str(p.path) for p in parts]
        labels, src, rows = [], [], []
        for k, part in enumerate(parts):
            all_labels, _ = read_labels(part.path)
            r = np.arange(len(all_labels)) if part.rows is None else np.asarray(part.rows, dtype=np.int64)
            labels.append(all_labels[r])
            src.append(np.full(len(r), k, dtype=np.int32))
            rows.append(r)
        self.labels = np.concatenate(labels)
        self.src, self.rows = np.concatenate(src), np.concatenate(rows)
        self.channels = channels
        self.shape: tuple[int, ...] = (0, 0, channels or 1)  # (height, width, channels) once the first decodes
        self.pixels: np.ndarray | None = None
        self.spill: _Spill | None = None
        self.decoded_rows = 0  # rows decoded so far in this process (the memory tests count them)
        n = len(self.labels)
        if not n:
            self.pixels = np.zeros((0, *self.shape), dtype=np.uint8)
            return
        first = self._decode(next(iter_rows(self.files[0], self.rows[:1])).images, np.zeros(1, np.int64))[0]
        self.decoded_rows = 0
        if budget.take(n * first.nbytes):
            self.pixels = np.empty((n, *self.shape), dtype=np.uint8)
            for positions, blobs in self._read_all():
                self.pixels[positions] = self._decode(blobs, positions)
        else:
            self.spill = _Spill(n)
            for positions, blobs in self._read_all():
                self.spill.write(positions, blobs)
            self.spill.close()

    def _read_all(self) -> Iterator[tuple[np.ndarray, list[bytes]]]:
        """(positions, their PNG bytes) for every row: each shard read front to back a row group at a time
        (:func:`regl.data.shards.iter_rows`), so memory holds one row group's bytes, not the shard's."""
        for k, path in enumerate(self.files):
            positions = np.flatnonzero(self.src == k)
            rows = self.rows[positions]
            for piece in iter_rows(path, np.unique(rows)):
                here = np.flatnonzero((rows >= piece.rows[0]) & (rows <= piece.rows[-1]))
                at = np.searchsorted(piece.rows, rows[here])
                yield positions[here], [piece.images[j] for j in at]

    def _decode(self, blobs: Sequence[bytes], positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(blobs), *self.shape), dtype=np.uint8)
        for j, (blob, i) in enumerate(zip(blobs, positions)):
            try:
                image = decode_png(blob, self.shape[2] if self.shape[0] else self.channels)
            except DECODE_ERRORS as exc:  # the message reads the row's id: only now
                raise ReglError(f"{self.where(int(i))}: {undecodable(exc)}") from None
            if not self.shape[0]:  # the first image sets the size and (unless forced) the channels
                self.shape = image.shape
                out = np.empty((len(blobs), *self.shape), dtype=np.uint8)
            if image.shape != self.shape:
                raise ReglError(f"{self.where(int(i))}: image is {image.shape[1]}x{image.shape[0]} pixels, the "
                                f"first is {self.shape[1]}x{self.shape[0]}; the images of a shard share one size")
            out[j] = image
        self.decoded_rows += len(blobs)
        return out

    def fetch(self, positions: np.ndarray) -> np.ndarray:
        if self.pixels is not None:
            return self.pixels[positions]
        return self._decode([self.spill.read(int(i)) for i in positions], positions)

    def where(self, i: int) -> str:
        """Image ``i`` for an error message: ``data/clients/client_0.parquet: row 12 (id fashion-mnist/train/5)``
        (the id is read only when a message needs it)."""
        path, row = self.files[int(self.src[i])], int(self.rows[i])
        value = next(iter_rows(path, [row])).columns.get("id", [None])[0]
        return f"{path}: row {row}" + (f" (id {value})" if value is not None else "")


class ShardImages(Dataset):
    """Rows of Parquet shards as (uint8 pixels (H, W, C), label); ``__getitems__`` fetches a whole batch.

    Open it with :func:`open_images`; ``subset`` selects rows (sharing the pixels)."""

    def __init__(self, store: _Store, index: np.ndarray, class_names: list[str]):
        self.store, self.index, self.class_names = store, index, class_names
        self.labels = torch.from_numpy(store.labels[index].copy())

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        """(height, width, channels) of every image."""
        return self.store.shape

    @property
    def in_memory(self) -> bool:
        return self.store.pixels is not None

    def subset(self, rows: np.ndarray | Sequence[int]) -> "ShardImages":
        return ShardImages(self.store, self.index[np.asarray(rows, dtype=np.int64)], self.class_names)

    def of_classes(self, classes: np.ndarray | Sequence[int]) -> "ShardImages":
        return self.subset(np.flatnonzero(np.isin(self.labels.numpy(), classes)))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=len(self.class_names))

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        return torch.from_numpy(self.store.fetch(self.index[idx])), self.labels[torch.from_numpy(idx)]

    @staticmethod
    def to_input(pixels: torch.Tensor) -> torch.Tensor:
        """A batch as a classifier takes it: float (N, C, H, W) in [-1, 1], on the pixels' device."""
        return to_float(pixels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


class TensorImages(Dataset):
    """Inputs already in memory as a float tensor (N, ...), with labels: the data of tests and benches that
    train on generated inputs (stage data always comes through ``ShardImages``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        return self.x[idx], self.labels[idx]

    @staticmethod
    def to_input(x: torch.Tensor) -> torch.Tensor:
        return x


Images = ShardImages | TensorImages


def open_images(parts: Sequence[Part | Path | str], channels: int | None = None,
                budget: CacheBudget | None = None) -> ShardImages:
    """The rows of ``parts`` (shards, or rows of shards), in order, as one dataset: decoded into memory when
    they fit in ``budget`` (default: no limit), streamed otherwise. ``channels`` forces 1 or 3 (default: the
    first image's). A missing or malformed shard, or an image that does not decode, is one line naming it."""
    parts = [p if isinstance(p, Part) else Part(Path(p)) for p in parts]
    if not parts:
        raise ValueError("open_images needs at least one shard")
    store = _Store(parts, channels, budget or CacheBudget(float("inf")))
    return ShardImages(store, np.arange(len(store.labels)), read_class_names(parts[0].path))


def _unbatched(batch):
    return batch


def batches(data: Images, order: Sequence[torch.Tensor], device: torch.device | str = "cpu",
            workers: int = 0, prefetch: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float images in [-1, 1] (N, C, H, W), labels) on ``device`` for each batch of indices in ``order``, in
    that order: decoded by ``workers`` loader processes (0: this one), pinned on CUDA."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    loader = DataLoader(data, batch_sampler=[b.tolist() for b in order], collate_fn=_unbatched,
                        num_workers=workers, pin_memory=cuda, prefetch_factor=prefetch if workers else None,
                        persistent_workers=False)
    for x, labels in loader:  # uint8 pixels cross to the GPU and become floats there: a quarter of the bytes
        yield data.to_input(x.to(device, non_blocking=True)), labels.to(device, non_blocking=True)


def in_order(n: int, batch_size: int) -> list[torch.Tensor]:
    """range(n) in batches, for scoring."""
    return list(torch.arange(n).split(batch_size))
