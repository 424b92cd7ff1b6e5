"""Stage `personalize`: each client fine-tunes the global model on its own data and is scored before/after.

Writes models/personal/client_<id>.safetensors, metrics/personalize.json and, for each client, the method's
Fig. 1 (plots/class_accuracy/client_<id>.png: its real and synthetic images per class, and per-class test
accuracy before and after its local update).
"""

from pathlib import Path

import numpy as np
import torch
import typer
from tqdm import tqdm

from regl.core.atomic import atomic_dir
from regl.data.client_data import client_files, load_client
from regl.core.device import resolve_device
from regl.data.imageset import CacheBudget, open_images
from regl.training.modelio import load_model, save_model
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.evaluation.personalize import PersonalizeParams, client_metrics, personalize, reported, summary
from regl.evaluation.plots import class_accuracy_figure, save_figure
from regl.data.shards import read_class_counts
from regl.core.stage import pipeline_paths, stage, write_json

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    model_file: Path = typer.Option(PATHS.models.global_model),
    clients_dir: Path = typer.Option(PATHS.data.clients),
    synthetic_dir: Path = typer.Option(PATHS.data.synthetic),
    local_test_dir: Path = typer.Option(PATHS.data.local_test),
    test_file: Path = typer.Option(PATHS.data.prepared / "test.parquet"),
    models_out: Path = typer.Option(PATHS.models.personal),
    metrics: Path = typer.Option(PATHS.metrics.personalize),
    class_accuracy_dir: Path = typer.Option(PATHS.plots.class_accuracy),
) -> None:
    with stage("personalize", params) as log:
        exp = load_experiment(params)
        p = load_section(params, "personalize", PersonalizeParams)
        device = resolve_device(p.device, "personalize.device")
        client_files(exp.clients, clients_dir, synthetic_dir, p.synthetic, "personalize.synthetic")
        client_files(exp.clients, local_test_dir, synthetic_dir, False, "")
        global_model, arch = load_model(model_file, device)
        budget = CacheBudget(p.cache_mb)
        global_test = open_images([test_file], arch["channels"], budget)
        names, channels = global_test.class_names, arch["channels"]

        torch.use_deterministic_algorithms(True, warn_only=True)
        per_client, models, class_before = {}, {}, None
        with atomic_dir(class_accuracy_dir) as figures:
            for cid in tqdm(exp.clients, desc="personalize", unit="client"):
                # one client at a time: its data goes when the next one comes (and gives back its budget)
                client_budget = CacheBudget(budget.left / 2**20)
                data = load_client(cid, clients_dir, synthetic_dir, p.synthetic, channels, only_held_classes=True,
                                   budget=client_budget)
                local = open_images([client_file(local_test_dir, cid)], channels, client_budget)
                result = personalize(global_model, data, local, global_test, len(names), p, device, class_before)
                class_before = result.class_accuracy_before  # the same global model for every client
                models[cid] = result.model
                per_client[str(cid)] = client_metrics(data, len(local), result, names)
                # the figure counts every synthetic image the client has, whatever personalize.synthetic says
                synthetic = client_file(synthetic_dir, cid)
                fig = class_accuracy_figure(
                    names, read_class_counts(client_file(clients_dir, cid)),
                    read_class_counts(synthetic) if synthetic.is_file() else np.zeros(len(names), np.int64),
                    reported(result.class_accuracy_before), reported(result.class_accuracy_after),
                    f"{client_name(cid)}: data and per-class accuracy, local update")
                save_figure(fig, client_file(figures, cid, ".png"))
                log.info("client %d: local accuracy %.4f -> %.4f", cid, result.accuracy_before,
                         result.accuracy_after)
                del data, local  # before the next client's are read
            with atomic_dir(models_out) as tmp:
                for cid, model in models.items():
                    save_model(client_file(tmp, cid, ".safetensors"), model, {**arch, "client": cid})
            write_json(metrics, summary(p, per_client))

if __name__ == "__main__":
    app()
