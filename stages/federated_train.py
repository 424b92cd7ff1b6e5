"""Stage `federated_train` (params section `train`): federated training over the clients' shards.

Writes models/global_model.safetensors, metrics/train.json and the per-round curve metrics/train_curve.csv.
`train.engine: local` trains the clients in this process (a killed run started again resumes from its last
finished round, checkpoint in .regl/checkpoints/); `flower` runs the same rounds with the clients in Flower
ClientApps: Flower's simulation runtime here, or SuperNodes on other machines (flower/server_app.py runs
`train_on_flower` of this file on the SuperLink's side).
"""

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import typer
from tqdm import tqdm

from regl.core.atomic import write_text
from regl.core.checkpoint import CHECKPOINT_DIR, Checkpoint, code_fingerprint, fingerprint
from regl.data.client_data import client_files, load_client
from regl.core.device import resolve_device
from regl.core.errors import ReglError
from regl.federated.algorithm import Algorithm
from regl.federated.engine import ClientRunner, InProcessClients
from regl.federated.registry import build_algorithm
from regl.federated.train import RunSetup, curve_csv, make_federation, model_arch, train, train_metrics
from regl.federated.train_params import TrainParams
from regl.data.imageset import CacheBudget, ShardImages, open_images
from regl.training.modelio import save_model
from regl.core.params import load_experiment, load_section
from regl.core.stage import stage, write_json

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class Files:
    """The stage's inputs and outputs, relative to the repository (the options below default to these)."""

    params: Path = Path("params.yaml")
    clients_dir: Path = Path("data/clients")
    synthetic_dir: Path = Path("data/synthetic")
    test_file: Path = Path("data/prepared/test.parquet")
    model_out: Path = Path("models/global_model.safetensors")
    metrics: Path = Path("metrics/train.json")
    curve_out: Path = Path("metrics/train_curve.csv")

    def under(self, root: Path) -> "Files":
        """Paths resolved against ``root`` (a deployed ServerApp does not start in the repository)."""
        return replace(self, **{f.name: root / getattr(self, f.name) for f in fields(self)})


def read_setup(files: Files, budget: CacheBudget) -> tuple[RunSetup, ShardImages]:
    exp, p = load_experiment(files.params), load_section(files.params, "train", TrainParams)
    test = open_images([files.test_file], budget=budget)
    if not len(test):
        raise ReglError(f"{files.test_file}: holds no images; re-run prepare (dvc repro prepare)")
    size, _, channels = test.shape
    return RunSetup(p, exp.clients, channels, len(test.class_names), size), test


def train_and_write(files: Files, setup: RunSetup, test, algorithm: Algorithm, runner: ClientRunner,
                    device: torch.device, checkpoint: Checkpoint | None, log) -> None:
    p = setup.params
    torch.use_deterministic_algorithms(True, warn_only=True)
    fed = make_federation(setup, algorithm, runner, device)
    real, synthetic = runner.image_counts()
    log.info("%s on %s (%s engine): %d clients, %d real + %d synthetic images, %d rounds", p.algorithm, device,
             p.engine, len(setup.clients), real, synthetic, p.rounds)
    result = train(fed, p.rounds, test, checkpoint, p)
    save_model(files.model_out, result.federation.model, model_arch(setup))
    write_json(files.metrics, train_metrics(setup, result.curve, real, synthetic))
    write_text(files.curve_out, curve_csv(result.curve))
    if checkpoint:
        checkpoint.remove()
    log.info("final test accuracy %.4f after %d rounds", result.curve[-1]["accuracy"], p.rounds)


def train_locally(files: Files, log) -> None:
    budget = CacheBudget(load_section(files.params, "train", TrainParams).cache_mb)
    setup, test = read_setup(files, budget)
    p = setup.params
    shards = client_files(setup.clients, files.clients_dir, files.synthetic_dir, p.synthetic, "train.synthetic")
    device = resolve_device(p.device)
    clients = [load_client(cid, files.clients_dir, files.synthetic_dir, p.synthetic, setup.channels, budget=budget)
               for cid in tqdm(setup.clients, desc="load clients", unit="client", leave=False)]
    algorithm = build_algorithm(p)
    runner = InProcessClients(clients, setup.model_factory()().to(device), algorithm, p, device)
    key = fingerprint({"train": p.model_dump(), "clients": setup.clients}, shards + [files.test_file])
    # the code too: a run killed, then resumed after a change to (say) an algorithm module starts over
    checkpoint = Checkpoint(CHECKPOINT_DIR / "federated_train.pt", key, code_fingerprint("federated_train"))
    train_and_write(files, setup, test, algorithm, runner, device, checkpoint, log)


def train_on_flower(files: Files, grid, log) -> None:
    """The ServerApp's body. A Flower run does not resume: the clients' state lives on the nodes."""
    from regl.federated.flower_engine import FlowerClients

    setup, test = read_setup(files, CacheBudget(load_section(files.params, "train", TrainParams).cache_mb))
    device = resolve_device(setup.params.device)
    runner = FlowerClients(grid, setup, device, files.clients_dir, files.synthetic_dir)
    train_and_write(files, setup, test, build_algorithm(setup.params), runner, device, None, log)


@app.command()
def main(
    params: Path = typer.Option(Files.params, help="params file"),
    clients_dir: Path = typer.Option(Files.clients_dir),
    synthetic_dir: Path = typer.Option(Files.synthetic_dir),
    test_file: Path = typer.Option(Files.test_file),
    model_out: Path = typer.Option(Files.model_out),
    metrics: Path = typer.Option(Files.metrics),
    curve_out: Path = typer.Option(Files.curve_out),
) -> None:
    with stage("federated_train", params) as log:
        files = Files(params, clients_dir, synthetic_dir, test_file, model_out, metrics, curve_out)
        p = load_section(params, "train", TrainParams)
        if p.engine == "flower":
            from regl.federated.flower_engine import simulate  # checks that the extra is installed first

            simulate(lambda grid: train_on_flower(files, grid, log), len(load_experiment(params).clients), p.flower)
        else:
            train_locally(files, log)


if __name__ == "__main__":
    app()
