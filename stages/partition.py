"""Stage `partition`: split the training pool over the clients in `clients`, with skew `beta`.

Writes data/clients/client_XX.parquet (training images), data/local_test/client_XX.parquet (test images
matching the client's label proportions), metrics/partition.json and plots/label_distribution.png.
"""

from pathlib import Path

import numpy as np
import typer

from regl.core.atomic import atomic_dir
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.data.partition import PartitionParams, local_test_view, split_clients, summary
from regl.evaluation.plots import count_heatmap, save_figure
from regl.core.seeding import rng
from regl.data.shards import iter_rows, read_labels, read_meta, write_pieces
from regl.core.stage import pipeline_paths, stage, write_json

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    prepared: Path = typer.Option(PATHS.data.prepared, help="folder with train.parquet and test.parquet"),
    clients_out: Path = typer.Option(PATHS.data.clients, help="client training shards"),
    local_test_out: Path = typer.Option(PATHS.data.local_test, help="client local test views"),
    metrics: Path = typer.Option(PATHS.metrics.partition),
    plot: Path = typer.Option(PATHS.plots.label_distribution),
) -> None:
    with stage("partition") as log:
        exp = load_experiment(params)
        p = load_section(params, "partition", PartitionParams)
        train_file, test_file = prepared / "train.parquet", prepared / "test.parquet"
        labels, names = read_labels(train_file)
        test_labels, _ = read_labels(test_file)
        result = split_clients(labels, len(names), len(exp.clients), exp.beta, p.scheme, p.min_size,
                               p.max_tries, p.classes_per_client, rng(p.seed, "partition"))
        log.info("%s split of %d images over %d clients (%d draw(s))", p.scheme, len(labels), len(exp.clients),
                 result.tries)

        # streamed: each client's rows are copied row group by row group, never the whole pool in memory
        counts = np.stack([np.bincount(labels[idx], minlength=len(names)) for idx in result.indices])
        views = [local_test_view(test_labels, c, p.local_test_size, rng(p.seed, "local_test", client))
                 for client, c in zip(exp.clients, counts)]
        for folder, source, rows, split in ((clients_out, train_file, result.indices, "train"),
                                            (local_test_out, test_file, views, "local_test")):
            meta = read_meta(source)
            with atomic_dir(folder) as tmp:
                for client, idx in zip(exp.clients, rows):
                    write_pieces(client_file(tmp, client), names, {**meta, "client": client, "split": split},
                                 iter_rows(source, idx))
        write_json(metrics, summary(exp.clients, counts, [len(v) for v in views], names, p.scheme, exp.beta,
                                    result.tries))
        title = f"{p.scheme} label split" + (f", beta = {exp.beta:g}" if p.scheme == "dirichlet" else "")
        save_figure(count_heatmap(counts, [client_name(c) for c in exp.clients], names, title), plot)


if __name__ == "__main__":
    app()
