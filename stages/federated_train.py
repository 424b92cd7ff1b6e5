"""Stage `federated_train` (params section `train`): federated training over the clients' shards.

Writes models/global_model.safetensors, metrics/train.json and the per-round curve metrics/train_curve.csv.
`train.engine: local` trains the clients in this process (a killed run started again resumes from its last
finished round, checkpoint in .regl/checkpoints/); `flower` runs the same algorithms on Flower's simulation
runtime.
"""

from pathlib import Path

import typer

from regl.federated.run import TrainPaths, run_training
from regl.stage import stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    clients_dir: Path = typer.Option(Path("data/clients")),
    synthetic_dir: Path = typer.Option(Path("data/synthetic")),
    test_file: Path = typer.Option(Path("data/prepared/test.parquet")),
    model_out: Path = typer.Option(Path("models/global_model.safetensors")),
    metrics: Path = typer.Option(Path("metrics/train.json")),
    curve_out: Path = typer.Option(Path("metrics/train_curve.csv")),
) -> None:
    with stage("federated_train"):
        run_training(TrainPaths(params, clients_dir, synthetic_dir, test_file, model_out, metrics, curve_out))


if __name__ == "__main__":
    app()
