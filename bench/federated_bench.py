"""Benchmark: the cost of one federated round against centralized training over the same samples.

Both run in this process on the embedded default's client shards (data/clients, from `dvc repro partition`):
one FedAvg round over all clients (1 local epoch each, aggregation included) versus one epoch of plain SGD
over the union of the same images, same model and batch size. Reports seconds, the ratio (goal <= 1.10),
and the resident memory after each of several rounds (it should stay flat: no growth with round count).

    python bench/federated_bench.py [--rounds 5] [--algorithm fedavg]
"""

import argparse
import statistics
import time
from pathlib import Path

import psutil
import torch

from regl.federated.params import TrainParams
from regl.federated.run import load_clients, make_federation, model_factory
from regl.params import load_experiment
from regl.training import SGDConfig, train_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--algorithm", default="fedavg")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    exp = load_experiment(args.params)
    p = TrainParams(algorithm=args.algorithm, client_fraction=1.0, local_epochs=1)
    clients = load_clients(exp.clients, Path("data/clients"), Path("data/synthetic"), False, channels=1)
    size = clients[0].x.shape[-1]
    factory = model_factory(p, 1, 10, size)
    x = torch.cat([c.x for c in clients])
    y = torch.cat([c.y for c in clients])
    print(f"{len(clients)} clients, {len(y)} images of {size} px, batch {p.batch_size}, "
          f"torch threads {torch.get_num_threads()}")

    fed = make_federation(p, clients, factory, torch.device("cpu"))
    sgd = SGDConfig(1, p.batch_size, p.lr, p.momentum, p.weight_decay)
    process = psutil.Process()
    fed_times, central_times, rss = [], [], []
    for r in range(args.rounds):  # interleaved, so both see the same machine load
        start = time.perf_counter()
        fed.run_round()
        fed_times.append(time.perf_counter() - start)
        rss.append(process.memory_info().rss / 2**20)
        model = factory()
        start = time.perf_counter()
        train_epochs(model, x, y, sgd, 0, "central", r)
        central_times.append(time.perf_counter() - start)

    f, c = statistics.median(fed_times), statistics.median(central_times)
    print(f"federated round (median of {args.rounds}): {f:.2f} s")
    print(f"centralized epoch, same samples:   {c:.2f} s")
    print(f"ratio federated / centralized:     {f / c:.3f}")
    print("resident memory after each round (MiB): " + ", ".join(f"{m:.0f}" for m in rss))
    print(f"growth from round 2 to round {args.rounds}: {rss[-1] - rss[1]:+.1f} MiB")


if __name__ == "__main__":
    main()
