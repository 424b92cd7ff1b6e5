"""The prepare stage's work: a source becomes four Parquet shards, train / val / test / public, streamed
(labels first, to choose the cuts; then the chosen images, a piece at a time).

Order of the cuts (each seeded, each stratified by class):
1. a source without a test split gets one (``test_fraction`` of its training images);
2. ``public_fraction`` of the training images become the *public pool* (the generator's pre-training data,
   owned by no client);
3. the rest is the clients' training pool, capped at ``max_train`` images; the test split at ``max_test``;
4. ``val_size`` images of what the cap leaves become the *validation split*, which tuning selects on (no client
   and no test ever sees it). Taken after the cap, it leaves the clients' draw as it is without it: a validation
   split changes no client's data and no result made before it. Where the cap leaves too few images (max_train
   null), the validation split is taken from the pool first and the cap applies to the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from pydantic import Field
from tqdm import tqdm

from regl.core.errors import ReglError
from regl.data.images import conform, encode_png, resize
from regl.core.params import Section
from regl.data.sampling import stratified_counts, stratified_pick, stratified_split
from regl.core.seeding import rng
from regl.data.shards import Shard, write_pieces
from regl.data.sources import SourceData, Split

log = logging.getLogger(__name__)


class PrepareParams(Section):
    source: str = "fashion-mnist"
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal["auto", 1, 3] = "auto"
    max_train: int | None = Field(12000, ge=1)  # None = keep all
    max_test: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    public_fraction: float = Field(0.1, ge=0, lt=1)
    val_size: int = Field(2000, ge=0)  # 0 = no validation split
    seed: int = Field(0, ge=0)


# images encoded per piece handed to the shard writer; memory holds one piece and one row group
ENCODE_BATCH = 256


@dataclass
class Cut:
    """One output shard: rows ``indices`` (sorted) of ``split``."""

    split: Split
    indices: np.ndarray


@dataclass
class Plan:
    """What prepare writes: the train, val, test and public cuts, at ``channels`` channels."""

    cuts: dict[str, Cut]
    channels: int


def _cap(labels: np.ndarray, cap: int | None, num_classes: int, gen: np.random.Generator) -> np.ndarray:
    if cap is None or cap >= len(labels):
        return np.arange(len(labels))
    return stratified_pick(labels, stratified_counts(labels, cap, num_classes), gen)


def _channels(data: SourceData, wanted: str | int) -> int:
    if wanted != "auto":
        return int(wanted)
    first = data.train.load(0)
    return 1 if conform(first, None).mode == "L" else 3


def _encode(cut: Cut, size: int, channels: int, class_names: list[str], name: str) -> Iterator[Shard]:
    """The cut's images resized and PNG-encoded, in pieces of ENCODE_BATCH, in row order."""
    with tqdm(total=len(cut.indices), desc=f"prepare {name}", unit="img", mininterval=1.0, leave=False) as bar:
        for start in range(0, len(cut.indices), ENCODE_BATCH):
            idx = cut.indices[start : start + ENCODE_BATCH]
            images = [encode_png(resize(conform(cut.split.load(int(i)), channels), size)) for i in idx]
            bar.update(len(idx))
            yield Shard(images=images, labels=cut.split.labels[idx], class_names=class_names,
                        columns={"source": ["real"] * len(idx), "id": [cut.split.ids[int(i)] for i in idx]})


def plan(data: SourceData, params: PrepareParams) -> Plan:
    """The four cuts, from the labels alone (no image is decoded but the first, for ``channels: auto``)."""
    k = len(data.class_names)
    for split_name, split in (("training", data.train), ("test", data.test)):
        if split is not None and len(split) == 0:
            raise ReglError(f"prepare.source = {data.name}: the {split_name} split holds no images; a source needs "
                            f"images with labels in every split it has")
    train_split, test_split = data.train, data.test
    train_idx = np.arange(len(train_split))
    if test_split is None:
        train_idx, test_idx = stratified_split(train_split.labels, params.test_fraction, k, rng(params.seed, "test"))
        test_split = train_split
    else:
        test_idx = np.arange(len(test_split))
    kept, public_idx = stratified_split(train_split.labels[train_idx], params.public_fraction, k,
                                        rng(params.seed, "public"))
    public_idx = train_idx[public_idx]
    train_idx = train_idx[kept]
    train_idx, val_idx = _train_and_val(train_split.labels, train_idx, params, k)
    test_idx = test_idx[_cap(test_split.labels[test_idx], params.max_test, k, rng(params.seed, "max_test"))]
    cuts = {"train": Cut(train_split, train_idx), "val": Cut(train_split, val_idx), "test": Cut(test_split, test_idx),
            "public": Cut(train_split, public_idx)}
    return Plan(cuts, _channels(data, params.channels))


def _train_and_val(labels: np.ndarray, pool: np.ndarray, params: PrepareParams,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """The clients' training cut and the validation cut of ``pool`` (indices into ``labels``), both sorted."""
    val_gen = rng(params.seed, "val")
    if params.max_train is not None and len(pool) - params.max_train >= params.val_size:
        train = pool[_cap(labels[pool], params.max_train, k, rng(params.seed, "max_train"))]
        spare = np.setdiff1d(pool, train, assume_unique=True)
        return train, spare[stratified_pick(labels[spare], stratified_counts(labels[spare], params.val_size, k),
                                            val_gen)]
    if params.val_size >= len(pool):
        raise ReglError(f"prepare.val_size = {params.val_size}: the training pool holds only {len(pool)} images "
                        f"after the public pool; the validation split must leave the clients some (lower it)")
    keep = stratified_pick(labels[pool], stratified_counts(labels[pool], params.val_size, k), val_gen)
    val, rest = pool[keep], np.setdiff1d(pool, pool[keep], assume_unique=True)
    return rest[_cap(labels[rest], params.max_train, k, rng(params.seed, "max_train"))], val


def prepare(data: SourceData, params: PrepareParams, folder: Path) -> dict[str, int]:
    """Write ``folder/{train,val,test,public}.parquet``, streamed: each cut is read, resized, encoded and written a
    piece at a time, so memory is bounded by a row group (shards.ROW_GROUP_BYTES), not by the source's size.
    Returns the images written per cut."""
    p = plan(data, params)
    log.info("%s: %s images at %d px, %d channel(s)", data.name,
             ", ".join(f"{len(c.indices)} {n}" for n, c in p.cuts.items()), params.image_size, p.channels)
    return {
        name: write_pieces(folder / f"{name}.parquet", data.class_names, {"dataset": data.name, "split": name},
                           _encode(cut, params.image_size, p.channels, data.class_names, name))
        for name, cut in p.cuts.items()
    }
