"""Stage `federated_train` (params section `train`): federated training over the clients' shards.

Writes models/global_model.safetensors, metrics/train.json and the per-round curve: test and validation accuracy
and loss, logged with DVCLive into metrics/train_curve/ as each round ends.
`train.engine: local` trains the clients in this process (a killed run started again resumes from its last
finished round, checkpoint in .regl/checkpoints/); `flower` runs the same rounds with the clients in Flower
ClientApps: Flower's simulation runtime here, or SuperNodes on other machines (the Flower App in flower/ runs
`regl.federated.flower_engine.train_on_flower` on the SuperLink's side).
"""

from pathlib import Path

import typer
from tqdm import tqdm

from regl.core.checkpoint import CHECKPOINT_DIR, Checkpoint, code_fingerprint, fingerprint
from regl.data.client_data import client_files, load_client
from regl.core.device import resolve_device
from regl.federated.engine import InProcessClients
from regl.federated.registry import build_algorithm
from regl.federated.train import StageFiles, read_setup, train_and_write
from regl.federated.train_params import TrainParams
from regl.data.imageset import CacheBudget
from regl.core.params import DEFAULT_PARAMS, read_params
from regl.core.stage import pipeline_paths, stage, use_threads

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])
FILES = StageFiles.of(PATHS)  # as dvc.yaml names them


def train_locally(files: StageFiles, clients: list[int], p: TrainParams, log) -> None:
    budget = CacheBudget(p.cache_mb)
    setup, scored = read_setup(files, p, clients, budget)
    shards = client_files(setup.clients, files.clients_dir, files.synthetic_dir, p.synthetic, "train.synthetic")
    device = resolve_device(p.device)
    data = [load_client(cid, files.clients_dir, files.synthetic_dir, p.synthetic, setup.channels, budget=budget)
            for cid in tqdm(setup.clients, desc="load clients", unit="client", leave=False)]
    algorithm = build_algorithm(p)
    runner = InProcessClients(data, setup.model_factory()().to(device), algorithm, p, device)
    key = fingerprint({"train": p.model_dump(), "clients": setup.clients},
                      shards + [files.test_file, files.val_file])
    # the code too: a run killed, then resumed after a change to (say) an algorithm module starts over
    checkpoint = Checkpoint(CHECKPOINT_DIR / "federated_train.pt", key, code_fingerprint("federated_train"))
    train_and_write(files, setup, scored, algorithm, runner, device, checkpoint, log)


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    clients_dir: Path = typer.Option(FILES.clients_dir),
    synthetic_dir: Path = typer.Option(FILES.synthetic_dir),
    test_file: Path = typer.Option(FILES.test_file),
    val_file: Path = typer.Option(FILES.val_file),
    model_out: Path = typer.Option(FILES.model_out),
    metrics: Path = typer.Option(FILES.metrics),
    curve_dir: Path = typer.Option(FILES.curve_dir, help="the per-round curve (DVCLive's folder)"),
    generator: Path = typer.Option(PATHS.models.generator, help="the base generator the nodes adapt "
                                   "(train.flower.generate_on_nodes)"),
) -> None:
    with stage("federated_train") as log:
        doc = read_params(params)  # read once
        exp, p = doc.experiment(), doc.section("train", TrainParams)
        use_threads(exp.threads)
        files = StageFiles(clients_dir, synthetic_dir, test_file, val_file, model_out, metrics, curve_dir)
        if p.engine == "flower":
            # checks that the extra is installed first
            from regl.federated.flower_engine import node_work, simulate, train_on_flower

            work = node_work(p, doc, generator)
            simulate(lambda grid: train_on_flower(files, exp.clients, p, grid, log, work), len(exp.clients),
                     p.flower)
        else:
            train_locally(files, exp.clients, p, log)


if __name__ == "__main__":
    app()
