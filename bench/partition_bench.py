"""Benchmark: partition 60,000 labels (10 classes, Fashion-MNIST's size) over 100 clients.

Reports seconds per split (median of repeats) for the Dirichlet scheme at several beta, with the IID split
(one permutation, cut in parts) measured in the same run as the floor. Goal: well under 2 s.

    python bench/partition_bench.py [--repeats 5]
"""

import argparse
import statistics
import time

import numpy as np

from regl.core.errors import ReglError
from regl.data.partition import dirichlet, iid
from regl.core.seeding import rng


def timed(fn, repeats):
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        result = fn(r)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    labels = np.repeat(np.arange(10), 6000)
    m = args.clients

    floor, _ = timed(lambda r: iid(labels, m, 10, rng(r, "bench")), args.repeats)
    print(f"{'split':<28}{'seconds':>10}{'x iid':>8}{'draws':>7}")
    print(f"{'iid':<28}{floor:>10.4f}{1.0:>8.1f}{1:>7}")
    for beta, min_size in ((5.0, 10), (0.5, 10), (0.1, 10), (0.1, 0), (0.01, 0), (0.01, 10)):
        name = f"dirichlet beta={beta} min={min_size}"
        try:
            secs, result = timed(lambda r: dirichlet(labels, m, beta, min_size, 1000, rng(r, "bench")), args.repeats)
            print(f"{name:<28}{secs:>10.4f}{secs / floor:>8.1f}{result.tries:>7}")
        except ReglError:
            start = time.perf_counter()
            try:
                dirichlet(labels, m, beta, min_size, 1000, rng(0, "bench"))
            except ReglError:
                pass
            print(f"{name:<28}{time.perf_counter() - start:>10.4f}{'':>8}{'gave up after 1000':>7}")


if __name__ == "__main__":
    main()
