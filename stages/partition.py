"""Stage `partition`: split the training pool over the clients in `clients`, with skew `beta`.

Writes data/clients/client_XX.parquet (training images), data/local_test/client_XX.parquet (test images
matching the client's label proportions), metrics/partition.json and plots/label_distribution.png.
"""

from pathlib import Path

import numpy as np
import typer

from regl.atomic import atomic_dir
from regl.naming import client_file, client_name
from regl.params import load_experiment, load_section
from regl.partition import PartitionParams, local_test_view, split_clients, summary
from regl.plots import count_heatmap, save_figure
from regl.seeding import rng
from regl.shards import read_shard, write_shard
from regl.stage import stage, write_json

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    prepared: Path = typer.Option(Path("data/prepared"), help="folder with train.parquet and test.parquet"),
    clients_out: Path = typer.Option(Path("data/clients"), help="client training shards"),
    local_test_out: Path = typer.Option(Path("data/local_test"), help="client local test views"),
    metrics: Path = typer.Option(Path("metrics/partition.json")),
    plot: Path = typer.Option(Path("plots/label_distribution.png")),
) -> None:
    with stage("partition") as log:
        exp = load_experiment(params)
        p = load_section(params, "partition", PartitionParams)
        train, test = read_shard(prepared / "train.parquet"), read_shard(prepared / "test.parquet")
        names = train.class_names
        result = split_clients(train.labels, len(names), len(exp.clients), exp.beta, p.scheme, p.min_size,
                               p.max_tries, p.classes_per_client, rng(p.seed, "partition"))
        log.info("%s split of %d images over %d clients (%d draw(s))", p.scheme, len(train), len(exp.clients),
                 result.tries)

        shards, views = [], []
        for client, idx in zip(exp.clients, result.indices):
            shard = train.take(idx)
            shard.meta = {**shard.meta, "client": client, "split": "train"}
            view = test.take(local_test_view(test.labels, shard.class_counts(), p.local_test_size,
                                             rng(p.seed, "local_test", client)))
            view.meta = {**view.meta, "client": client, "split": "local_test"}
            shards.append(shard)
            views.append(view)

        counts = np.stack([s.class_counts() for s in shards])
        with atomic_dir(clients_out) as tmp:
            for client, shard in zip(exp.clients, shards):
                write_shard(client_file(tmp, client), shard)
        with atomic_dir(local_test_out) as tmp:
            for client, view in zip(exp.clients, views):
                write_shard(client_file(tmp, client), view)
        write_json(metrics, summary(exp.clients, counts, [len(v) for v in views], names, p.scheme, exp.beta,
                                    result.tries))
        title = f"{p.scheme} label split" + (f", beta = {exp.beta:g}" if p.scheme == "dirichlet" else "")
        save_figure(count_heatmap(counts, [client_name(c) for c in exp.clients], names, title), plot)


if __name__ == "__main__":
    app()
