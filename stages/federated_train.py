"""Stage `federated_train` (params section `train`): federated training over the clients' shards.

Writes models/global_model.safetensors, metrics/train.json and the per-round curve metrics/train_curve.csv.
A killed run started again resumes from its last finished round (checkpoint in .regl/checkpoints/).
"""

from pathlib import Path

import torch
import typer

from regl.atomic import write_text
from regl.checkpoint import CHECKPOINT_DIR, Checkpoint, fingerprint
from regl.client_data import client_files
from regl.federated.params import TrainParams
from regl.federated.run import load_clients, make_federation, model_factory, train
from regl.images import decode_png
from regl.modelio import save_model
from regl.params import load_experiment, load_section
from regl.shards import read_shard
from regl.stage import stage, write_json
from regl.tensors import shard_tensors
from regl.training import resolve_device

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
    with stage("federated_train") as log:
        exp = load_experiment(params)
        p = load_section(params, "train", TrainParams)
        device = resolve_device(p.device)
        files = client_files(exp.clients, clients_dir, synthetic_dir, p.synthetic, "train.synthetic")
        test = read_shard(test_file)
        size, _, channels = decode_png(test.images[0]).shape
        factory = model_factory(p, channels, len(test.class_names), size)

        torch.use_deterministic_algorithms(True, warn_only=True)
        clients = load_clients(exp.clients, clients_dir, synthetic_dir, p.synthetic, channels)
        log.info("%s on %s: %d clients, %d real + %d synthetic images, %d rounds", p.algorithm, device,
                 len(clients), sum(c.num_real for c in clients), sum(c.num_synthetic for c in clients), p.rounds)
        key = fingerprint({"train": p.model_dump(), "clients": exp.clients}, files + [test_file])
        checkpoint = Checkpoint(CHECKPOINT_DIR / "federated_train.pt", key)
        result = train(make_federation(p, clients, factory, device), p.rounds, shard_tensors(test, channels),
                       checkpoint)

        fed, last = result.federation, result.curve[-1]
        save_model(model_out, fed.model, {"name": p.model, "channels": channels, "num_classes":
                                          len(test.class_names), "image_size": size, "algorithm": p.algorithm})
        write_json(metrics, {
            "algorithm": p.algorithm,
            "synthetic": p.synthetic,
            "rounds": p.rounds,
            "accuracy": last["accuracy"],
            "loss": last["loss"],
            # under strong skew the last round's accuracy swings from round to round; this is steadier
            "accuracy_mean_last_5": round(sum(r["accuracy"] for r in result.curve[-5:]) / len(result.curve[-5:]), 6),
            "num_clients": len(clients),
            "real_images": sum(c.num_real for c in clients),
            "synthetic_images": sum(c.num_synthetic for c in clients),
        })
        rows = ["round,accuracy,loss,clients"] + [f"{r['round']},{r['accuracy']},{r['loss']},{r['clients']}"
                                                   for r in result.curve]
        write_text(curve_out, "\n".join(rows) + "\n")
        checkpoint.remove()
        log.info("final test accuracy %.4f after %d rounds", last["accuracy"], p.rounds)


if __name__ == "__main__":
    app()
