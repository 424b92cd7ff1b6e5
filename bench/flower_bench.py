"""Benchmark: seconds per round, local engine vs Flower's simulation runtime, same workload.

The federated_train stage runs twice as a user runs it (`python stages/federated_train.py`), once per engine,
on the embedded default's client shards (data/clients, 10 clients, small CNN, real images only) with the
params in params.yaml except `train.engine`, `train.rounds` and `train.synthetic`. Reported per engine: wall
time, start-up (process start to the first round's start), mean seconds per round (rounds 2.., so Ray's
start and the actors' first imports count as start-up), and peak memory (sum of the resident set sizes of the
stage's whole process tree - Ray's raylet, GCS and actors included - sampled every 0.1 s).

    python bench/flower_bench.py [--rounds 5] [--client-cpus 1] [--out bench/results/flower.json]

With ``--regl-client-side`` it times ReGL's client side instead, for the ``--clients`` given: the central pipeline
(`finetune_lora` then `generate` for each client, one process each, one after another, as `dvc repro` runs them, at
params.yaml's `threads`) against Flower's simulation runtime with `train.flower.generate_on_nodes` (one virtual
node per client, each fine-tuning and generating in its Ray actor with `--client-cpus` threads, side by side up to
the machine's cores; timed from the server sending the base generator to the last node's answer, one round after).
It reports whether each node's synthetic shard has the central stage's bytes (only at the same thread count).

    python bench/flower_bench.py --regl-client-side --clients 0 1 2 3 --out bench/results/flower_regl.json

Needs `dvc repro partition` (and for --regl-client-side `pretrain_generator`) and the flower extra
(pip install 'regl[flower]').
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

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d) ")

ROUND = re.compile(r"(\d\d):(\d\d):(\d\d) regl\.federated\.train: round (\d+)/\d+: .*\(([\d.]+) s\)$")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_stage(params: Path, out: Path, extra: list[str] = (), cwd: Path | None = None) -> dict:
    cmd = [sys.executable, str(ROOT / "stages/federated_train.py"), "--params", str(params),
           "--model-out", str(out / "model.safetensors"), "--metrics", str(out / "train.json"),
           "--curve-dir", str(out / "curve"), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
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
    stamps = [(line, _seconds(m)) for line in lines if (m := STAMP.match(line))]
    sent = next((t for line, t in stamps if "sending the base generator" in line), None)
    answered = [t for line, t in stamps if re.search(r"regl\.federated\.flower_engine: client \d+: LoRA", line)]
    client_side = {"client_side_s": (max(answered) - sent) % 86400} if sent is not None and answered else {}
    return {**client_side, "wall_s": round(wall, 1), "startup_s": round(first_round_start or 0.0, 1),
            "round_s": [round(r, 2) for r in rounds], "mean_round_s": round(sum(later) / len(later), 2),
            "peak_rss_mib": round(peak[0] / 2**20),
            "accuracy": json.loads((out / "train.json").read_text())["accuracy"]}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _seconds(m: re.Match) -> int:
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))


def regl_client_side(base: dict, clients: list[int], client_cpus: float, tmp: Path) -> dict:
    """ReGL's client side for ``clients``: the central stages one after another, then the simulated nodes."""
    paths = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][0]["paths"]
    data, models = {k: ROOT / v for k, v in paths["data"].items()}, {k: ROOT / v for k, v in paths["models"].items()}
    params = {**base, "clients": clients}
    central = tmp / "central"
    central.mkdir()
    (tmp / "params-central.yaml").write_text(yaml.safe_dump(params))
    per_client = {}
    start = time.perf_counter()
    for cid in clients:
        t = time.perf_counter()
        for cmd in (["finetune_lora.py", "--out", str(central / "lora")],
                    ["generate.py", "--lora", str(central / "lora"), "--out", str(central / "synthetic"),
                     "--vanilla-out", str(central / "vanilla"), "--grids", str(central / "grids")]):
            subprocess.run([sys.executable, str(ROOT / "stages" / cmd[0]), "--client", str(cid), "--params",
                            str(tmp / "params-central.yaml"), *cmd[1:]], check=True, capture_output=True, cwd=ROOT)
        per_client[cid] = round(time.perf_counter() - t, 1)
        print(f"central: client {cid} in {per_client[cid]} s", flush=True)
    central_s = round(time.perf_counter() - start, 1)

    params["train"] = {**base["train"], "engine": "flower", "rounds": 1, "synthetic": True,
                       "flower": {**base["train"].get("flower", {}), "client_cpus": client_cpus, "client_gpus": 0,
                                  "generate_on_nodes": True}}
    (tmp / "params-nodes.yaml").write_text(yaml.safe_dump(params))
    out = tmp / "nodes-run"
    out.mkdir()
    extra = ["--clients-dir", str(data["clients"]), "--synthetic-dir", str(data["synthetic"]),
             "--test-file", str(data["prepared"] / "test.parquet"), "--val-file", str(data["prepared"] / "val.parquet"),
             "--generator", str(models["generator"])]
    nodes = run_stage(tmp / "params-nodes.yaml", out, extra, cwd=tmp)  # node folders: tmp/.regl/nodes
    same = {cid: (tmp / f".regl/nodes/client_{cid}/synthetic/client_{cid}.parquet").read_bytes()
            == (central / f"synthetic/client_{cid}.parquet").read_bytes() for cid in clients}
    return {"cpu": cpu_model(), "cores": len(psutil.Process().cpu_affinity()), "clients": clients,
            "threads_central": base.get("threads"), "client_cpus": client_cpus,
            "central_s": central_s, "central_per_client_s": per_client, "nodes_client_side_s": nodes["client_side_s"],
            "nodes_stage_wall_s": nodes["wall_s"], "peak_rss_mib_nodes": nodes["peak_rss_mib"],
            "ratio_nodes_vs_central": round(nodes["client_side_s"] / central_s, 2),
            "synthetic_bytes_equal": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--client-cpus", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/flower.json"))
    ap.add_argument("--regl-client-side", action="store_true", help="time ReGL's client side (see above)")
    ap.add_argument("--clients", type=int, nargs="+", help="with --regl-client-side: these clients (default: all)")
    args = ap.parse_args()
    base = yaml.safe_load(Path("params.yaml").read_text())
    if args.regl_client_side:
        with tempfile.TemporaryDirectory() as tmp:
            results = regl_client_side(base, args.clients or base["clients"], args.client_cpus, Path(tmp))
        print(json.dumps(results, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        return
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
