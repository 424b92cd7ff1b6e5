"""Benchmark: peak resident memory of federated_train, personalize and evaluate against the number of images.

Builds, in a temporary folder, a Fashion-MNIST-shaped task at 128 px (1 channel, generated pixels: smooth
class patterns plus noise, 10 classes), split IID over 10 clients, at two sizes (default 12,000 and 48,000
training images; the test set an eighth of that), and runs each stage script on it in its own process, reading
that process's ru_maxrss. federated_train: one round, 2 of the 10 clients (client_fraction 0.2), 10 local
steps each (a step's memory does not depend on the number of images; more steps only take longer), the test
set scored; personalize: clients 0 and 1 loaded and scored before and after, epochs 0 (its local update is
federated_train's loop); evaluate: the test set. The goal (issue 12): from the small to the large size, peak
memory grows by at most a quarter of what the extra images the stage reads take as float32.

    python bench/memory_bench.py [--sizes 12000 48000] [--stages federated_train personalize evaluate]
                                 [--src OTHER/src --stages-dir OTHER/stages]   # e.g. the code before

Figures: docs/performance.md ("Memory"), docs/stages.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES, CLIENTS, POOL = 128, 10, 10, 2000

# runs a stage script in this fresh process, then reports the process's peak resident memory (KiB on Linux)
CHILD = """
import resource, runpy, sys
script, params = sys.argv[1], sys.argv[2]
sys.argv = [script, "--params", params]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@functools.cache
def pool() -> tuple[list[bytes], np.ndarray]:
    """2,000 distinct PNGs: a class's 8x8 pattern, bilinearly upsampled, plus noise (about 11 KiB each)."""
    from PIL import Image

    from regl.data.images import encode_png

    patterns = np.random.default_rng(0).integers(0, 256, (CLASSES, 8, 8), dtype=np.uint8)
    bases = np.stack([np.asarray(Image.fromarray(p).resize((SIZE, SIZE), Image.BILINEAR)) for p in patterns])
    labels = np.arange(POOL) % CLASSES
    noise = np.random.default_rng(1).integers(-12, 13, (POOL, SIZE, SIZE), dtype=np.int16)
    return [encode_png(im) for im in np.clip(bases[labels] + noise, 0, 255).astype(np.uint8)], labels


def images(n: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    """n images drawn from the pool (encoding each anew would take minutes; decoding is what is measured)."""
    blobs, labels = pool()
    pick = np.random.default_rng(seed).integers(0, POOL, n)
    return [blobs[i] for i in pick], labels[pick]


def build(folder: Path, n_train: int, template: Path, cache_mb: int | None) -> None:
    """data/clients (IID, 10 clients), data/local_test, data/prepared/{test,val}.parquet under ``folder``."""
    from regl.data.naming import client_file
    from regl.data.shards import Shard, write_shard

    names = [f"class {k}" for k in range(CLASSES)]
    per_client = n_train // CLIENTS
    for c in range(CLIENTS):
        blobs, labels = images(per_client, 1 + c)
        write_shard(client_file(folder / "data/clients", c), Shard(blobs, labels, names))
        blobs, labels = images(50, 100 + c)
        write_shard(client_file(folder / "data/local_test", c), Shard(blobs, labels, names))
    blobs, labels = images(n_train // 8, 999)
    write_shard(folder / "data/prepared/test.parquet", Shard(blobs, labels, names))
    write_shard(folder / "data/prepared/val.parquet", Shard([], [], names))  # no validation split
    params = yaml.safe_load(template.read_text())
    params["clients"] = list(range(CLIENTS))
    params["train"].update(rounds=1, client_fraction=0.2, local_steps=10, synthetic=False, device="cpu")
    params["personalize"].update(epochs=0, synthetic=False, device="cpu")
    if "evaluate" in params:
        params["evaluate"]["device"] = "cpu"
    if cache_mb is not None:
        params["compute"]["cache_mb"] = cache_mb
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    two = dict(params, clients=[0, 1])  # personalize (and evaluate after it): two clients
    (folder / "params_two.yaml").write_text(yaml.safe_dump(two))


def run_stage(folder: Path, stage: str, src: Path, stages_dir: Path) -> tuple[float, float]:
    """(peak resident MiB, seconds) of one stage run in a fresh process."""
    params = "params.yaml" if stage == "federated_train" else "params_two.yaml"
    code = CHILD
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(stages_dir / f"{stage}.py"), params], cwd=folder,
                         env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{stage} failed:\n{out.stderr[-3000:]}")
    kib = int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("MAXRSS")))
    return kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[12000, 48000])
    parser.add_argument("--stages", nargs="+", default=["federated_train", "personalize", "evaluate"])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the library to measure")
    parser.add_argument("--stages-dir", type=Path, default=ROOT / "stages")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params template (the code's own)")
    parser.add_argument("--cache-mb", type=int, default=None, help="cache_mb of every stage (default: params.yaml's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()

    results: dict[str, dict[int, tuple[float, float]]] = {s: {} for s in args.stages}
    with tempfile.TemporaryDirectory(prefix="regl-memory-bench-") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / str(n)
            start = time.perf_counter()
            build(folder, n, args.params, args.cache_mb)
            print(f"{n} training images at {SIZE} px: data built in {time.perf_counter() - start:.0f} s", flush=True)
            for stage in args.stages:
                results[stage][n] = run_stage(folder, stage, args.src, args.stages_dir)
                print(f"  {stage:16s} peak {results[stage][n][0]:7.0f} MiB  ({results[stage][n][1]:.0f} s)",
                      flush=True)

    small, large = args.sizes
    print(f"\n{'stage':16s} {'images':>9s} {'peak MiB':>9s} {'growth':>8s} {'float32':>8s} {'share':>6s}")
    report = {}
    for stage in args.stages:
        # the extra images the stage reads, as float32: federated_train opens all 10 clients' training images
        # and the test set (an eighth as many), personalize clients 0 and 1 (2 of 10) and the test set,
        # evaluate the test set
        scale = {"federated_train": 1.125, "personalize": 0.325, "evaluate": 0.125}[stage]
        extra = (large - small) * scale * SIZE * SIZE * 4 / 2**20
        growth = results[stage][large][0] - results[stage][small][0]
        print(f"{stage:16s} {small:>4d}->{large:<5d} {results[stage][small][0]:4.0f}->{results[stage][large][0]:<4.0f}"
              f" {growth:+8.0f} {extra:8.0f} {growth / extra:6.2f}")
        report[stage] = {"sizes": args.sizes, "peak_mib": [round(results[stage][n][0]) for n in args.sizes],
                         "seconds": [round(results[stage][n][1]) for n in args.sizes], "growth_mib": round(growth),
                         "extra_float32_mib": round(extra), "share": round(growth / extra, 3)}
    print("share: peak growth / the extra images' float32 size (goal <= 0.25)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
