"""Peak resident memory of the prepare and partition stages on a large colour source, at two source sizes.

Builds a Parquet source of N JPEG photos-like images (smooth colour fields plus noise, 256x192 px) in a scratch
folder, runs `stages/prepare.py` (224 px, RGB) and `stages/partition.py` (10 clients) on it in fresh processes and
reports each one's peak RSS. Both stream their images a row group at a time, so peak memory should grow far less
than the images they write; before streaming, both held every output PNG in one Python list.

    python bench/prepare_bench.py                  # 2,000 vs 8,000 images, a few minutes on 2 cores
    python bench/prepare_bench.py --sizes 500 1000 # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class_{k}" for k in range(10)]
RUN = """
import resource, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def make_source(path: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEG images with class labels, written a row group at a time (the bench's own memory stays small)."""
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:192, 0:256] / 256.0
    writer = None
    for start in range(0, n, 500):
        blobs, labels = [], []
        for i in range(start, min(n, start + 500)):
            k = i % len(CLASSES)
            base = np.stack([np.sin(xx * (k + 1) + gen.random() * 6), np.cos(yy * (k + 2)), xx * yy], axis=-1)
            image = np.clip(127 + 100 * base + gen.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=90)
            blobs.append(buf.getvalue())
            labels.append(k)
        table = pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array(labels, pa.int64())})
        table = table.replace_schema_metadata({"regl": json.dumps({"class_names": CLASSES})})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=500)
    writer.close()


def run_stage(name: str, args: list[str], cwd: Path) -> float:
    """Run ``stages/<name>.py`` in a fresh process; its peak RSS in MiB."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN, str(REPO / "stages" / f"{name}.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")][-1]
    return int(peak.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 8000], help="source images, small and large")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepare_bench.") as tmp:
        for n in args.sizes:
            work = Path(tmp) / str(n)
            work.mkdir()
            make_source(work / "source.parquet", n)
            params = {"clients": list(range(10)), "beta": 0.5,
                      "prepare": {"source": f"parquet:{work / 'source.parquet'}", "image_size": 224, "channels": 3,
                                  "public_fraction": 0.1, "test_fraction": 0.2},
                      "partition": {"scheme": "dirichlet", "local_test_size": 50}}
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            prepare_mib = run_stage("prepare", ["--params", "params.yaml", "--out", "prepared"], work)
            partition_mib = run_stage("partition", ["--params", "params.yaml", "--prepared", "prepared",
                                                    "--clients-out", "clients", "--local-test-out", "local_test",
                                                    "--metrics", "partition.json", "--plot", "partition.png"], work)
            written = sum(f.stat().st_size for f in (work / "prepared").glob("*.parquet")) / 2**20
            rows.append((n, written, prepare_mib, partition_mib))
    print(f"{'images':>7} {'PNG written MiB':>16} {'prepare peak MiB':>17} {'partition peak MiB':>19}")
    for n, written, prep, part in rows:
        print(f"{n:>7} {written:>16.0f} {prep:>17.0f} {part:>19.0f}")
    (n0, w0, p0, q0), (n1, w1, p1, q1) = rows
    print(f"{n1 - n0} more images: {w1 - w0:.0f} MiB more written; peak RSS grows by {p1 - p0:.0f} MiB in prepare "
          f"({(p1 - p0) / (w1 - w0):.2f} of the extra bytes), {q1 - q0:.0f} MiB in partition "
          f"({(q1 - q0) / (w1 - w0):.2f})")


if __name__ == "__main__":
    main()
