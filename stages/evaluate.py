"""Stage `evaluate`: the headline metrics (metrics/eval.json) and the plots.

Global test accuracy, per-class and macro accuracy and the confusion matrix of the global model; the
personalized accuracy per client with mean and spread (from personalize); the image counts used; plots:
confusion matrix (CSV for DVC and PNG), label distribution real vs real + synthetic.
"""

from pathlib import Path

import numpy as np
import typer

from regl.core.atomic import write_text
from regl.core.device import resolve_device
from regl.evaluation.scoring import (
    EvaluateParams,
    PersonalizeMetrics,
    TrainMetrics,
    confusion_matrix,
    evaluation_report,
    predicted_classes,
    read_metrics,
)
from regl.data.imageset import CacheBudget, open_images
from regl.training.modelio import load_model
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.evaluation.plots import count_heatmap, heatmaps_side_by_side, save_figure
from regl.data.shards import read_class_counts
from regl.core.stage import pipeline_paths, stage, write_json

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


def _counts(path: Path, num_classes: int) -> np.ndarray:
    return read_class_counts(path) if path.is_file() else np.zeros(num_classes, dtype=np.int64)


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    model_file: Path = typer.Option(PATHS.models.global_model),
    test_file: Path = typer.Option(PATHS.data.prepared / "test.parquet"),
    clients_dir: Path = typer.Option(PATHS.data.clients),
    synthetic_dir: Path = typer.Option(PATHS.data.synthetic),
    train_metrics: Path = typer.Option(PATHS.metrics.train),
    personal_metrics: Path = typer.Option(PATHS.metrics.personalize),
    metrics: Path = typer.Option(PATHS.metrics.eval),
    predictions_out: Path = typer.Option(PATHS.plots.predictions),
    confusion_png: Path = typer.Option(PATHS.plots.confusion_matrix),
    distribution_png: Path = typer.Option(PATHS.plots.label_distribution_synthetic),
) -> None:
    with stage("evaluate", params) as log:
        exp = load_experiment(params)
        trained = read_metrics(train_metrics, TrainMetrics, "federated_train")
        personal = read_metrics(personal_metrics, PersonalizeMetrics, "personalize", exp.clients)
        p = load_section(params, "evaluate", EvaluateParams)
        device = resolve_device(p.device, "evaluate.device")
        model, arch = load_model(model_file, device)
        test = open_images([test_file], arch["channels"], CacheBudget(p.cache_mb))
        names, k = test.class_names, len(test.class_names)
        actual, predicted = test.labels.numpy(), predicted_classes(model, test, device, p)
        real = np.stack([_counts(client_file(clients_dir, c), k) for c in exp.clients])
        synthetic = np.stack([_counts(client_file(synthetic_dir, c), k) for c in exp.clients])
        report = evaluation_report(actual, predicted, names, exp.clients, real, synthetic, trained, personal)
        write_json(metrics, report)

        rows = ["actual,predicted"] + [f"{names[a]},{names[b]}" for a, b in zip(actual, predicted)]
        write_text(predictions_out, "\n".join(rows) + "\n")
        save_figure(count_heatmap(confusion_matrix(actual, predicted, k), names, names,
                                  "confusion matrix (rows: actual)"), confusion_png)
        save_figure(heatmaps_side_by_side([(real, "real images"), (real + synthetic, "real + synthetic images")],
                                          [client_name(c) for c in exp.clients], names), distribution_png)
        log.info("global accuracy %.4f, macro %.4f, personalized %s", report["global_accuracy"],
                 report["macro_accuracy"], report["personalized_accuracy_mean"])


if __name__ == "__main__":
    app()
