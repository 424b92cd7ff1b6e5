"""Stage `personalize`: each client fine-tunes the global model on its own data and is scored before/after.

Writes models/personal/client_<id>.safetensors and metrics/personalize.json.
"""

from pathlib import Path

import numpy as np
import torch
import typer
from tqdm import tqdm

from regl.atomic import atomic_dir
from regl.client_data import client_files, load_client
from regl.evaluation import rounded
from regl.modelio import load_model, save_model
from regl.naming import client_name
from regl.params import load_experiment, load_section
from regl.personalize import PersonalizeParams, personalize
from regl.shards import read_shard
from regl.stage import stage, write_json
from regl.tensors import shard_tensors
from regl.training import resolve_device

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    model_file: Path = typer.Option(Path("models/global_model.safetensors")),
    clients_dir: Path = typer.Option(Path("data/clients")),
    synthetic_dir: Path = typer.Option(Path("data/synthetic")),
    local_test_dir: Path = typer.Option(Path("data/local_test")),
    test_file: Path = typer.Option(Path("data/prepared/test.parquet")),
    models_out: Path = typer.Option(Path("models/personal")),
    metrics: Path = typer.Option(Path("metrics/personalize.json")),
) -> None:
    with stage("personalize") as log:
        exp = load_experiment(params)
        p = load_section(params, "personalize", PersonalizeParams)
        device = resolve_device(p.device, "personalize.device")
        client_files(exp.clients, clients_dir, synthetic_dir, p.synthetic, "personalize.synthetic")
        client_files(exp.clients, local_test_dir, synthetic_dir, False, "")
        global_model, arch = load_model(model_file, device)
        test = read_shard(test_file)
        names, channels = test.class_names, arch["channels"]
        global_test = shard_tensors(test, channels)

        torch.use_deterministic_algorithms(True, warn_only=True)
        per_client, models, class_before = {}, {}, None
        for cid in tqdm(exp.clients, desc="personalize", unit="client"):
            data = load_client(cid, clients_dir, synthetic_dir, p.synthetic, channels, only_held_classes=True)
            local = shard_tensors(read_shard(local_test_dir / f"{client_name(cid)}.parquet"), channels)
            result = personalize(global_model, data, local, global_test, len(names), p, device, class_before)
            class_before = result.class_accuracy_before  # the same global model for every client
            models[cid] = result.model
            per_client[str(cid)] = {
                "real": data.num_real,
                "synthetic": data.num_synthetic,
                "local_test": len(local[1]),
                "classes_held": [names[k] for k in np.unique(data.y[: data.num_real].numpy())],
                "accuracy_before": rounded(result.accuracy_before),
                "accuracy_after": rounded(result.accuracy_after),
                "class_accuracy_before": {n: rounded(v) for n, v in zip(names, result.class_accuracy_before)},
                "class_accuracy_after": {n: rounded(v) for n, v in zip(names, result.class_accuracy_after)},
            }
            log.info("client %d: local accuracy %.4f -> %.4f", cid, result.accuracy_before, result.accuracy_after)

        with atomic_dir(models_out) as tmp:
            for cid, model in models.items():
                save_model(tmp / f"{client_name(cid)}.safetensors", model, {**arch, "client": cid})
        after = [c["accuracy_after"] for c in per_client.values() if c["accuracy_after"] is not None]
        before = [c["accuracy_before"] for c in per_client.values() if c["accuracy_before"] is not None]
        write_json(metrics, {
            "epochs": p.epochs,
            "synthetic": p.synthetic,
            "accuracy_before_mean": rounded(np.mean(before)),
            "accuracy_after_mean": rounded(np.mean(after)),
            "accuracy_after_std": rounded(np.std(after)),
            "per_client": per_client,
        })


if __name__ == "__main__":
    app()
