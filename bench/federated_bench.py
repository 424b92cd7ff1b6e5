"""Benchmark: the cost of one federated round against centralized training over the same samples.

Both run in this process on the embedded default's client shards (data/clients, from `dvc repro partition`):
one FedAvg round over all clients (1 local epoch each, aggregation included) versus one epoch of plain SGD
over the union of the same images, same model and batch size. Reports seconds, the ratio (goal <= 1.10),
and the resident memory after each of several rounds (it should stay flat: no growth with round count).

    python bench/federated_bench.py [--rounds 7] [--algorithm fedavg]   # the first two rounds run slower: keep 7
"""

import argparse
import statistics
import time
from pathlib import Path

import psutil
import torch

from regl.data.client_data import load_client
from regl.federated.engine import InProcessClients
from regl.federated.registry import build_algorithm
from regl.federated.train import RunSetup, make_federation
from regl.federated.train_params import TrainParams
from regl.data.imageset import open_images
from regl.data.naming import client_file
from regl.core.params import load_experiment
from regl.training.loop import train_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--algorithm", default="fedavg")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    exp = load_experiment(args.params)
    p = TrainParams(algorithm=args.algorithm, client_fraction=1.0, local_epochs=1, synthetic=False)
    clients = [load_client(c, Path("data/clients"), Path("data/synthetic"), False, channels=1) for c in exp.clients]
    size = clients[0].images.shape[0]
    setup = RunSetup(p, exp.clients, 1, 10, size)
    factory = setup.model_factory()
    union = open_images([client_file(Path("data/clients"), c) for c in exp.clients], 1)
    print(f"{len(clients)} clients, {len(union)} images of {size} px, batch {p.batch_size}, "
          f"torch threads {torch.get_num_threads()}")

    algorithm = build_algorithm(p)
    fed = make_federation(setup, algorithm, InProcessClients(clients, factory(), algorithm, p), torch.device("cpu"))
    process = psutil.Process()
    fed_times, central_times, rss = [], [], []
    for r in range(args.rounds):  # interleaved, so both see the same machine load
        start = time.perf_counter()
        fed.run_round()
        fed_times.append(time.perf_counter() - start)
        rss.append(process.memory_info().rss / 2**20)
        model = factory()
        start = time.perf_counter()
        train_epochs(model, union, p, 1, 0, "central", r)
        central_times.append(time.perf_counter() - start)

    f, c = statistics.median(fed_times), statistics.median(central_times)
    print(f"federated round (median of {args.rounds}): {f:.2f} s")
    print(f"centralized epoch, same samples:   {c:.2f} s")
    print(f"ratio federated / centralized:     {f / c:.3f}")
    print("resident memory after each round (MiB): " + ", ".join(f"{m:.0f}" for m in rss))
    print(f"growth from round 2 to round {args.rounds}: {rss[-1] - rss[1]:+.1f} MiB")


if __name__ == "__main__":
    main()
