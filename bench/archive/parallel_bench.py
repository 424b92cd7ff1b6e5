"""How to run several experiments on one machine: a batch of four training runs, side by side or one by one.

Each run is the `federated_train` stage on the embedded default's data (data/ of a `dvc repro`'d workspace) with
its own seed and a short round budget. The batch runs with J workers at T torch threads each:

- J = 1, T = cores: one after another, each with the whole machine (the baseline);
- J = 2, T = cores / 2: two side by side, the cores split between them (what `experiments/sweep.py --workers 2`
  sets up);
- J = 2, T = cores: two side by side at full thread count each (what `dvc queue start -j 2` gives when nobody
  sets `threads`): oversubscribed.

Prints and writes (bench/archive/results/parallel_<tag>.json) the batch's wall time and its ratio to the baseline.
Run it on a quiet machine: another busy process changes every figure.

    python bench/archive/parallel_bench.py --rounds 3 --tag cpu2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def run_one(tmp: Path, seed: int, threads: int, rounds: int) -> float:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["threads"] = threads
    params["train"].update(rounds=rounds, seed=seed)
    job = tmp / f"seed{seed}_t{threads}"
    job.mkdir(parents=True, exist_ok=True)
    (job / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "stages" / "federated_train.py"), "--params", str(job / "params.yaml"),
                    "--clients-dir", str(ROOT / "data/clients"), "--synthetic-dir", str(ROOT / "data/synthetic"),
                    "--test-file", str(ROOT / "data/prepared/test.parquet"),
                    "--model-out", str(job / "model.safetensors"), "--metrics", str(job / "train.json"),
                    "--curve-out", str(job / "curve.csv")],
                   check=True, capture_output=True, cwd=job, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def batch(workers: int, threads: int, rounds: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        each = list(pool.map(lambda s: run_one(Path(tmp), s, threads, rounds), range(runs)))
        return {"workers": workers, "threads": threads, "batch_s": round(time.perf_counter() - start, 1),
                "run_s": [round(t, 1) for t in each]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    half = max(1, args.cores // 2)
    results = []
    for workers, threads in ((1, args.cores), (2, half), (2, args.cores)):  # printed as each batch ends
        r = batch(workers, threads, args.rounds, args.runs)
        r["ratio_to_one_by_one"] = round(r["batch_s"] / results[0]["batch_s"], 2) if results else 1.0
        results.append(r)
        print(f"-j {r['workers']}, threads {r['threads']}: batch of {args.runs} in {r['batch_s']} s "
              f"({r['ratio_to_one_by_one']}x one by one)", flush=True)
    out = {"machine": f"{platform.machine()}, {args.cores} cores", "rounds": args.rounds, "runs": args.runs,
           "setting": "federated_train, embedded default (ReGL, 10 clients, 16,000 images), seeds 0..runs-1",
           "results": results}
    path = ROOT / "bench" / "archive" / "results" / f"parallel_{args.tag}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
