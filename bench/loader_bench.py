"""Benchmark: resnet18 at 224 px on CPU, images/s with 0, 1 and 2 loader workers, and the loader alone.

Builds a shard of colour 224 px PNGs (generated: smooth patterns plus noise) in a temporary folder, streams it
(cache_mb 0: every batch decoded from PNG, as at the paper's scale) and runs a few SGD steps of resnet18 through
``train_epochs``; then the loader alone (decode + float conversion, no model) for the same batches. The
loader's images/s is what one CPU core of decoding feeds; a GPU that trains faster than that needs
``loader_workers`` ≈ its images/s divided by it.

    python bench/loader_bench.py [--batches 4] [--batch-size 32] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regl.data.images import encode_png
from regl.data.imageset import CacheBudget, batches, open_images
from regl.training.models import build_model
from regl.data.shards import Shard, write_shard
from regl.training.loop import SGDParams, batch_order, train_epochs

SIZE, CLASSES, DISTINCT = 224, 10, 64


def make_shard(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (DISTINCT, 8, 8, 3), dtype=np.uint8)
    blobs = []
    for p in patterns:
        base = np.asarray(Image.fromarray(p).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.int16)
        blobs.append(encode_png(np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)))
    pick = rng.integers(0, DISTINCT, n)
    write_shard(path, Shard([blobs[i] for i in pick], pick % CLASSES, [f"c{k}" for k in range(CLASSES)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    n = args.batches * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.parquet"
        make_shard(path, n)
        data = open_images([path], 3, CacheBudget(0))
        print(f"resnet18, {n} images of {SIZE} px RGB streamed from PNG, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}")
        order = batch_order(n, args.batch_size, 0, "bench")
        for workers in args.workers:
            start = time.perf_counter()
            for _ in batches(data, order, workers=workers):
                pass
            loader = n / (time.perf_counter() - start)
            model = build_model("resnet18", 3, CLASSES, SIZE)
            p = SGDParams(batch_size=args.batch_size, loader_workers=workers)
            train_epochs(model, data, p, 1, 0, "warm-up", steps=1)
            start = time.perf_counter()
            train_epochs(model, data, p, 1, 0, "bench")
            train = n / (time.perf_counter() - start)
            print(f"loader_workers {workers}: training {train:6.1f} images/s   loader alone {loader:6.1f} images/s")


if __name__ == "__main__":
    main()
