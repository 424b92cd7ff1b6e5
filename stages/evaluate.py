"""Stage `evaluate`: the headline metrics (metrics/eval.json) and the plots.

Global test accuracy, per-class and macro accuracy and the confusion matrix of the global model; the
personalized accuracy per client with mean and spread (from personalize); the image counts used; plots:
confusion matrix, the method's Fig. 1 for each client, label distribution real vs real + synthetic.
"""

import json
from pathlib import Path

import numpy as np
import typer

from regl.atomic import atomic_dir, write_text
from regl.errors import ReglError
from regl.evaluation import accuracy, confusion_matrix, macro_accuracy, per_class_accuracy, rounded
from regl.modelio import load_model
from regl.naming import client_name
from regl.params import load_experiment
from regl.plots import class_accuracy_figure, count_heatmap, heatmaps_side_by_side, save_figure
from regl.shards import read_shard
from regl.stage import stage, write_json
from regl.tensors import shard_tensors
from regl.training import predict, resolve_device

app = typer.Typer(add_completion=False)


def _counts(path: Path, num_classes: int) -> np.ndarray:
    return read_shard(path).class_counts() if path.is_file() else np.zeros(num_classes, dtype=np.int64)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    model_file: Path = typer.Option(Path("models/global_model.safetensors")),
    test_file: Path = typer.Option(Path("data/prepared/test.parquet")),
    clients_dir: Path = typer.Option(Path("data/clients")),
    synthetic_dir: Path = typer.Option(Path("data/synthetic")),
    train_metrics: Path = typer.Option(Path("metrics/train.json")),
    personal_metrics: Path = typer.Option(Path("metrics/personalize.json")),
    metrics: Path = typer.Option(Path("metrics/eval.json")),
    predictions_out: Path = typer.Option(Path("plots/predictions.csv")),
    confusion_png: Path = typer.Option(Path("plots/confusion_matrix.png")),
    class_accuracy_dir: Path = typer.Option(Path("plots/class_accuracy")),
    distribution_png: Path = typer.Option(Path("plots/label_distribution_synthetic.png")),
) -> None:
    with stage("evaluate") as log:
        exp = load_experiment(params)
        for f in (train_metrics, personal_metrics):
            if not f.is_file():
                raise ReglError(f"{f} missing; run the stage that writes it (dvc repro)")
        trained, personal = json.loads(train_metrics.read_text()), json.loads(personal_metrics.read_text())
        model, arch = load_model(model_file, resolve_device("auto"))
        test = read_shard(test_file)
        names, k = test.class_names, len(test.class_names)
        x, y = shard_tensors(test, arch["channels"])
        predicted = predict(model, x, device=next(model.parameters()).device).argmax(1).numpy()
        confusion = confusion_matrix(y.numpy(), predicted, k)

        real = np.stack([_counts(clients_dir / f"{client_name(c)}.parquet", k) for c in exp.clients])
        synthetic = np.stack([_counts(synthetic_dir / f"{client_name(c)}.parquet", k) for c in exp.clients])
        used_synthetic = synthetic if trained.get("synthetic") else np.zeros_like(synthetic)
        clients = personal["per_client"]
        after = np.array([c["accuracy_after"] for c in clients.values() if c["accuracy_after"] is not None])
        write_json(metrics, {
            "global_accuracy": rounded(accuracy(confusion)),
            "macro_accuracy": rounded(macro_accuracy(confusion)),
            "personalized_accuracy_mean": rounded(after.mean()) if after.size else None,
            "personalized_accuracy_std": rounded(after.std()) if after.size else None,
            "algorithm": trained.get("algorithm"),
            "synthetic": trained.get("synthetic"),
            "real_images": int(real.sum()),
            "synthetic_images": int(used_synthetic.sum()),
            "per_class_accuracy": {n: rounded(v) for n, v in zip(names, per_class_accuracy(confusion))},
            "per_client": {
                str(c): {
                    "real": int(real[i].sum()),
                    "synthetic": int(used_synthetic[i].sum()),
                    "personalized_accuracy": clients[str(c)]["accuracy_after"],
                    "global_model_accuracy": clients[str(c)]["accuracy_before"],
                }
                for i, c in enumerate(exp.clients)
            },
        })
        rows = ["actual,predicted"] + [f"{names[a]},{names[b]}" for a, b in zip(y.numpy(), predicted)]
        write_text(predictions_out, "\n".join(rows) + "\n")
        save_figure(count_heatmap(confusion, names, names, "confusion matrix (rows: actual)"), confusion_png)
        save_figure(heatmaps_side_by_side([(real, "real images"), (real + synthetic, "real + synthetic images")],
                                          [client_name(c) for c in exp.clients], names), distribution_png)
        with atomic_dir(class_accuracy_dir) as tmp:
            for i, c in enumerate(exp.clients):
                info = clients[str(c)]
                before = np.array([np.nan if v is None else v for v in info["class_accuracy_before"].values()])
                after_c = np.array([np.nan if v is None else v for v in info["class_accuracy_after"].values()])
                fig = class_accuracy_figure(names, real[i], synthetic[i], before, after_c,
                                            f"{client_name(c)}: data and per-class accuracy, local update")
                save_figure(fig, tmp / f"{client_name(c)}.png")
        log.info("global accuracy %.4f, macro %.4f, personalized %.4f", accuracy(confusion),
                 macro_accuracy(confusion), after.mean() if after.size else float("nan"))


if __name__ == "__main__":
    app()
