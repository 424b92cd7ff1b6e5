"""Benchmark: seconds per round, local engine vs Flower's simulation runtime, same workload.

The federated_train stage runs twice as a user runs it (`python stages/federated_train.py`), once per engine,
on the embedded default's client shards (data/clients, 10 clients, small CNN, real images only) with the
params in params.yaml except `train.engine`, `train.rounds` and `train.synthetic`. Reported per engine: wall
time, start-up (process start to the first round's start), mean seconds per round (rounds 2.., so Ray's
start and the actors' first imports count as start-up), and peak memory (sum of the resident set sizes of the
stage's whole process tree - Ray's raylet, GCS and actors included - sampled every 0.1 s).

    python bench/flower_bench.py [--rounds 5] [--client-cpus 1] [--out bench/results/flower.json]

Needs `dvc repro partition` and the flower extra (pip install 'regl[flower]').
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROUND = re.compile(r"(\d\d):(\d\d):(\d\d) regl\.federated\.run: round (\d+)/\d+: .*\(([\d.]+) s\)$")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_stage(params: Path, out: Path) -> dict:
    cmd = [sys.executable, "stages/federated_train.py", "--params", str(params),
           "--model-out", str(out / "model.safetensors"), "--metrics", str(out / "train.json"),
           "--curve-dir", str(out / "curve")]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak, done = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rounds, first_round_start = [], None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = ROUND.search(line)
        if m:
            secs = float(m.group(5))
            rounds.append(secs)
            if first_round_start is None:
                first_round_start = time.perf_counter() - start - secs
    proc.wait()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit("".join(lines[-30:]))
    later = rounds[1:] or rounds
    return {"wall_s": round(wall, 1), "startup_s": round(first_round_start or 0.0, 1),
            "round_s": [round(r, 2) for r in rounds], "mean_round_s": round(sum(later) / len(later), 2),
            "peak_rss_mib": round(peak[0] / 2**20),
            "accuracy": json.loads((out / "train.json").read_text())["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--client-cpus", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/flower.json"))
    args = ap.parse_args()
    base = yaml.safe_load(Path("params.yaml").read_text())
    results: dict = {"rounds": args.rounds, "clients": len(base["clients"])}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "flower"):
            params = dict(base)
            params["train"] = {**base["train"], "engine": engine, "rounds": args.rounds, "synthetic": False,
                               "flower": {"client_cpus": args.client_cpus, "client_gpus": 0}}
            path = Path(tmp) / f"params-{engine}.yaml"
            path.write_text(yaml.safe_dump(params))
            out = Path(tmp) / engine
            out.mkdir()
            results[engine] = run_stage(path, out)
            print(engine, results[engine], flush=True)
    local, flower = results["local"], results["flower"]
    results["round_ratio_flower_vs_local"] = round(flower["mean_round_s"] / local["mean_round_s"], 2)
    results["wall_ratio_flower_vs_local"] = round(results["flower"]["wall_s"] / results["local"]["wall_s"], 2)
    results["peak_memory_ratio_flower_vs_local"] = round(
        results["flower"]["peak_rss_mib"] / results["local"]["peak_rss_mib"], 2)
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
