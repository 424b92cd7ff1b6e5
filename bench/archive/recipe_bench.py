"""Benchmark: does a training recipe converge? IID FedAvg against the same model trained centrally on the same
images, for candidate recipes, on the embedded default's pool and on a small stratified subset of it; and, at
the pipeline's label skew, ReGL against FedAvg at the default recipe and at equal local steps.

Reads data/prepared/{train,test}.parquet (the clients' pool and the test split, from `dvc repro prepare`);
the skewed runs also read data/clients/ (the pipeline's partition) and data/synthetic/ (the generate stages).
Every job is one run:

- ``fed``: FedAvg over the pool split IID (regl.data.partition.iid) over --clients clients, --rounds rounds, test
  accuracy after every round;
- ``central``: the same model, lr, batch and momentum trained centrally on the union of the same images for
  --central-epochs epochs, test accuracy after every epoch;
- ``skew``: FedAvg with or without the synthetic shards (ReGL) on the pipeline's skewed clients, by epochs or
  at a fixed number of local steps.

A recipe's summary at round R: the mean test accuracy of rounds R-4..R and the change acc[R] - acc[R-5]
(flat: |change| <= 0.01); centralized: the mean of its last five epochs. Jobs run in a process pool and are
appended to a JSON-lines file as they finish, so a cut-short run keeps what it did.

    python bench/archive/recipe_bench.py --sizes 12000 3600 --recipes gn-lr0.05 nonorm-lr0.01 --workers 2 \\
        --out bench/archive/results/recipe.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

RECIPES: dict[str, dict] = {}
for _norm in ("gn", "nonorm"):
    for _lr in (0.01, 0.02, 0.05, 0.1):
        for _e, _b in ((1, 64), (2, 64), (1, 32), (2, 32)):
            _name = f"{_norm}-lr{_lr}" + ("" if (_e, _b) == (1, 64) else f"-e{_e}-b{_b}")
            RECIPES[_name] = {"norm": _norm == "gn", "lr": _lr, "local_epochs": _e, "batch_size": _b}


@dataclass(frozen=True)
class Job:
    kind: str  # fed | central | skew
    recipe: str
    size: int = 0  # pool images (fed, central)
    synthetic: bool = False  # skew
    local_steps: int | None = None  # skew


def subset(labels: np.ndarray, size: int) -> np.ndarray:
    from regl.data.sampling import stratified_counts, stratified_pick
    from regl.core.seeding import rng

    if size >= len(labels):
        return np.arange(len(labels))
    return stratified_pick(labels, stratified_counts(labels, size, 10), rng(0, "recipe_bench", "subset", size))


def model_factory(recipe: dict, channels: int, size: int):
    from regl.training.models import SmallCNN
    from regl.core.seeding import derive_seed

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(0, "init"))
            return SmallCNN(channels, 10, size, norm=recipe["norm"])

    return build


def run_job(job: Job, args) -> dict:
    from regl.data.client_data import ClientData, load_client
    from regl.evaluation.scoring import evaluate
    from regl.federated.engine import Federation, InProcessClients
    from regl.federated.registry import build_algorithm
    from regl.federated.train_params import TrainParams
    from regl.data.imageset import open_images
    from regl.data.partition import iid
    from regl.core.seeding import rng
    from regl.training.loop import train_epochs

    torch.set_num_threads(1)
    device = torch.device(args.device)
    recipe = RECIPES[job.recipe]
    start = time.perf_counter()
    pool = open_images([args.prepared / "train.parquet"], 1)
    test = open_images([args.prepared / "test.parquet"], 1)
    keep = subset(pool.labels.numpy(), job.size) if job.kind != "skew" else np.arange(len(pool))
    pool = pool.subset(keep)
    factory = model_factory(recipe, 1, pool.shape[0])
    p = TrainParams(algorithm="fedavg", lr=recipe["lr"], batch_size=recipe["batch_size"],
                    local_epochs=recipe["local_epochs"], local_steps=job.local_steps, rounds=args.rounds)
    curve, steps = [], []
    if job.kind == "central":
        model = factory().to(device)
        for epoch in range(args.central_epochs):
            train_epochs(model, pool, p, 1, 0, "central", epoch, device=device)
            curve.append(evaluate(model, test, device)["accuracy"])
    else:
        if job.kind == "fed":
            parts = iid(pool.labels.numpy(), args.clients, 1, rng(0, "recipe_bench", "iid", job.size)).indices
            clients = [ClientData(i, pool.subset(idx), len(idx)) for i, idx in enumerate(parts)]
        else:
            ids = sorted(int(f.stem.split("_")[1]) for f in args.clients_dir.glob("client_*.parquet"))
            clients = [load_client(c, args.clients_dir, args.synthetic_dir, job.synthetic, channels=1) for c in ids]
        algorithm = build_algorithm(p)
        runner = InProcessClients(clients, factory().to(device), algorithm, p, device)
        fed = Federation(factory(), algorithm, runner, [c.client for c in clients], 1.0, 0, device)
        real_train = runner.train

        def counted(*a, **k):
            results = real_train(*a, **k)
            steps.append(sum(r.steps for r in results) / len(results))
            return results

        runner.train = counted
        for _ in range(args.rounds):
            fed.run_round()
            curve.append(evaluate(fed.model, test, device)["accuracy"])
    return {**asdict(job), **recipe, "curve": [round(a, 4) for a in curve],
            "mean_local_steps_per_round": round(float(np.mean(steps)), 2) if steps else None,
            "images": len(pool), "seconds": round(time.perf_counter() - start, 1), "device": args.device}


def summary(curve: list[float], at: int) -> dict:
    c = curve[:at]
    if len(c) < 6:
        return {}
    return {"mean_last_5": round(float(np.mean(c[-5:])), 4), "change_last_5": round(c[-1] - c[-6], 4)}


def _work(payload):
    job, args = payload
    try:
        return run_job(job, args)
    except Exception as exc:  # keep the other jobs
        return {**asdict(job), "error": repr(exc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--clients-dir", type=Path, default=Path("data/clients"))
    parser.add_argument("--synthetic-dir", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[12000, 3600])
    parser.add_argument("--recipes", nargs="+", default=["gn-lr0.05"])
    parser.add_argument("--skew-recipes", nargs="*", default=[], help="recipes for the ReGL vs FedAvg runs")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--central-epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/archive/results/recipe.json"))
    args = parser.parse_args()

    jobs = []
    for name in args.skew_recipes:  # ReGL and FedAvg by epochs, then both at ReGL's mean local steps
        r = RECIPES[name]
        ids = sorted(int(f.stem.split("_")[1]) for f in args.clients_dir.glob("client_*.parquet"))
        from regl.data.naming import client_file
        from regl.data.shards import read_shard

        real = [len(read_shard(client_file(args.clients_dir, c)).labels) for c in ids]
        syn = [len(read_shard(client_file(args.synthetic_dir, c)).labels) for c in ids]
        k = math.ceil(np.mean([math.ceil((n + s) / r["batch_size"]) for n, s in zip(real, syn)]) * r["local_epochs"])
        jobs += [Job("skew", name, synthetic=s, local_steps=ls) for ls in (None, k) for s in (True, False)]
    for name in args.recipes:
        for size in args.sizes:
            jobs += [Job("fed", name, size), Job("central", name, size)]
    seen, unique = set(), []
    for j in jobs:  # the centralized run depends on norm, lr and batch only
        r = RECIPES[j.recipe]
        key = (j.kind, r["norm"], r["lr"], r["batch_size"], j.size) if j.kind == "central" else j
        if key not in seen:
            seen.add(key)
            unique.append(j)
    print(f"{len(unique)} jobs on {args.device}, {args.workers} workers", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = args.out.with_suffix(".jsonl")
    results = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool, lines.open("a") as log:
        for res in pool.imap_unordered(_work, [(j, args) for j in unique]):
            for at in sorted({min(20, len(res.get("curve", []))), len(res.get("curve", []))}):
                res[f"at_{at}"] = summary(res.get("curve", []), at)
            results.append(res)
            log.write(json.dumps(res) + "\n")
            log.flush()
            print(json.dumps({k: v for k, v in res.items() if k != "curve"}), flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
