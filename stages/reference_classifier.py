"""Stage `reference_classifier`: a classifier trained once on the clients' real training pool
(data/prepared/train.parquet), the judge of synthetic images; evaluation reuses it.

Writes models/reference_classifier/model.safetensors and metrics/reference_classifier.json.
"""

from pathlib import Path

import typer

from regl.core.atomic import atomic_dir
from regl.evaluation.scoring import evaluate
from regl.data.imageset import CacheBudget, open_images
from regl.core.params import DEFAULT_PARAMS, load_section
from regl.evaluation.reference_classifier import ReferenceClassifierParams, save_reference, train_reference
from regl.core.stage import pipeline_paths, stage, write_json

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    prepared: Path = typer.Option(PATHS.data.prepared, help="folder with train.parquet and test.parquet"),
    out: Path = typer.Option(PATHS.models.reference_classifier),
    metrics: Path = typer.Option(PATHS.metrics.reference_classifier),
) -> None:
    with stage("reference_classifier", params) as log:
        p = load_section(params, "reference_classifier", ReferenceClassifierParams)
        budget = CacheBudget(p.cache_mb)
        train = open_images([prepared / "train.parquet"], budget=budget)
        test = open_images([prepared / "test.parquet"], train.shape[2], budget)
        model, config = train_reference(train, p)
        result = evaluate(model, test, compute=p)
        log.info("%s on %d real training images: test accuracy %.3f", p.model, len(train), result["accuracy"])
        with atomic_dir(out) as tmp:
            save_reference(model, config, tmp)
        write_json(metrics, {"test_accuracy": round(result["accuracy"], 4), "test_loss": round(result["loss"], 4),
                             "train_images": len(train), "test_images": len(test)})


if __name__ == "__main__":
    app()
