"""Benchmark (not a test): every federated algorithm on the embedded default, real images only.

The embedded default's prepared data (data/prepared/{train,test}.parquet from `dvc repro prepare`: Fashion-MNIST,
12 000 training images, 32 px), split over the params' 10 clients by the partition stage's own code at each β
(Dirichlet, partition.seed), then for each algorithm the federated_train recipe of params.yaml (train section:
local SGD, rounds, each algorithm's defaults) with train.synthetic = false. Reports the final and the
mean-of-last-five test accuracy of every algorithm at each β, MOON's for several μ at each β, and any
variants asked for (an algorithm with train.* overrides, at every β: diagnosis). Runs go to a pool of
processes (one per run; on a GPU they share it).

    python bench/archive/baselines_bench.py                              # both β, nine algorithms, MOON μ sweep
    python bench/archive/baselines_bench.py --rounds 2 --algorithms fedavg scaffold --betas 0.5 --moon-mu
    python bench/archive/baselines_bench.py --set fedopt.server_lr=0.03  # any train.* override, for every run
    python bench/archive/baselines_bench.py --variant fedadam_lr0.03=fedadam:fedopt.server_lr=0.03
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
import yaml

from regl.data.client_data import ClientData
from regl.core.device import resolve_device
from regl.evaluation.scoring import evaluate
from regl.federated.engine import Federation, InProcessClients
from regl.federated.registry import build_algorithm, projection_dim
from regl.federated.train_params import ALGORITHMS, TrainParams
from regl.data.imageset import open_images
from regl.training.models import build_model
from regl.core.params import load_experiment, load_section
from regl.data.partition import PartitionParams, split_clients
from regl.core.seeding import derive_seed, rng

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stage_times import set_key  # noqa: E402  (one dotted-key override, shared with bench/stage_times.py)


def one_run(job: dict) -> dict:
    """One federated run; returns its accuracy curve. Runs in a worker process."""
    torch.set_num_threads(job["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(job["device"])
    test = open_images([Path(job["prepared"]) / "test.parquet"])  # channels as the federated_train stage reads them
    size, _, channels = test.shape
    train = open_images([Path(job["prepared"]) / "train.parquet"], channels)
    part = PartitionParams.model_validate(job["partition"])
    split = split_clients(train.labels.numpy(), len(train.class_names), len(job["clients"]), job["beta"],
                          part.scheme, part.min_size, part.max_tries, part.classes_per_client,
                          rng(part.seed, "partition"))
    clients = [ClientData(cid, train.subset(idx), len(idx)) for cid, idx in zip(job["clients"], split.indices)]
    p = TrainParams.model_validate(job["train"])

    def factory():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(p.seed, "init"))
            return build_model(p.model, channels, len(train.class_names), size, projection_dim(p))

    algorithm = build_algorithm(p)
    runner = InProcessClients(clients, factory().to(device), algorithm, p, device)
    fed = Federation(factory(), algorithm, runner, job["clients"], p.client_fraction, p.seed, device)
    start, curve = time.perf_counter(), []
    for _ in range(p.rounds):
        fed.run_round()
        m = evaluate(fed.model, test, device)
        curve.append(round(m["accuracy"], 4))
    return {**{k: job[k] for k in ("name", "beta")}, "curve": curve, "final": curve[-1],
            "mean_last_5": round(float(np.mean(curve[-5:])), 4), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 0.01])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--rounds", type=int, default=None, help="default: train.rounds")
    parser.add_argument("--moon-mu", type=float, nargs="*", default=[0.1, 1.0, 5.0],
                        help="MOON's μ values measured at every β (none: skip)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ALGORITHM[:KEY=VALUE,...]",
                        help="an extra run at every β, e.g. fedavgm_lr0.1=fedavgm:fedavgm.server_lr=0.1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train.* override")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--machine", default=platform.node(), help="what produced the numbers, for the record")
    parser.add_argument("--out", type=Path, default=Path("bench/archive/results/baselines.json"))
    args = parser.parse_args()

    exp = load_experiment(args.params)
    raw = yaml.safe_load(args.params.read_text())
    train = dict(raw.get("train", {}), synthetic=False, device=args.device)
    train.pop("engine", None)
    train.pop("flower", None)
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(train, key, value)
    if args.rounds:
        train["rounds"] = args.rounds
    partition = load_section(args.params, "partition", PartitionParams).model_dump()
    threads = max(1, (os.cpu_count() or 1) // max(1, args.workers))
    base = {"prepared": str(args.prepared), "partition": partition, "clients": exp.clients, "device": args.device,
            "threads": threads}
    jobs = []
    for beta in args.betas:
        for name in args.algorithms:
            jobs.append({**base, "name": name, "beta": beta, "train": dict(train, algorithm=name)})
    default_mu = TrainParams.model_validate(dict(train, algorithm="moon")).moon.mu
    for beta in args.betas:
        for mu in args.moon_mu:
            moon = dict(train.get("moon", {}), mu=mu)
            jobs.append({**base, "name": f"moon_mu{mu:g}", "beta": beta,
                         "train": dict(train, algorithm="moon", moon=moon)})
    for variant in args.variant:
        name, _, spec = variant.partition("=")
        algorithm, _, sets = spec.partition(":")
        t = json.loads(json.dumps(dict(train, algorithm=algorithm)))
        for item in filter(None, sets.split(",")):
            key, _, value = item.partition("=")
            set_key(t, key, value)
        TrainParams.model_validate(t)  # a typo fails here, before any run
        jobs.extend({**base, "name": name, "beta": beta, "train": t} for beta in args.betas)
    jobs.sort(key=lambda j: j["name"].startswith("moon"), reverse=True)  # the slowest first

    start = time.perf_counter()
    runs: list[dict] = []

    def write() -> dict:
        """The results so far (after every finished run, so a run cut short still leaves its table)."""
        ordered = sorted(runs, key=lambda r: (-r["beta"], r["name"] not in ALGORITHMS, r["name"]))
        table: dict[str, dict[str, dict]] = {}
        for r in ordered:
            table.setdefault(f"beta={r['beta']:g}", {})[r["name"]] = {
                k: r[k] for k in ("final", "mean_last_5", "seconds", "curve")}
        result = {
            "machine": args.machine,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
            "torch": torch.__version__,
            "setup": {"prepared": str(args.prepared), "clients": len(exp.clients), "synthetic": False,
                      "rounds": train.get("rounds"), "overrides": args.set, "variants": args.variant,
                      "moon_default_mu": default_mu},
            "runs_done": f"{len(runs)} of {len(jobs)}",
            "wall_seconds": round(time.perf_counter() - start, 1),
            "results": table,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return result

    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(one_run, job) for job in jobs]):
            runs.append(future.result())
            r = runs[-1]
            print(f"done {len(runs)}/{len(jobs)}: {r['name']} beta={r['beta']:g} final {r['final']:.4f} "
                  f"mean5 {r['mean_last_5']:.4f} ({r['seconds']} s)", flush=True)
            result = write()
    table = result["results"]
    for beta, rows in table.items():
        fedavg = rows.get("fedavg", {}).get("mean_last_5")
        print(f"\n{beta}: algorithm, final, mean of last 5" + (", vs fedavg (points)" if fedavg else ""))
        for name, r in rows.items():
            gap = f"  {100 * (r['mean_last_5'] - fedavg):+.1f}" if fedavg is not None else ""
            print(f"  {name:14s} {r['final']:.4f}  {r['mean_last_5']:.4f}{gap}")
    print(f"\nwrote {args.out} ({result['wall_seconds']} s)")


if __name__ == "__main__":
    main()
