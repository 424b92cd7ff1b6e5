"""Stage `generator_quality`: how classifiable the synthetic images are and how close to each client's own
images, vanilla (LoRA scale 0) against adapted. Reads the shards of the clients listed in `clients`.

Writes metrics/generator.json: totals first, then one entry per client.
"""

from pathlib import Path

import typer

from regl.core.device import resolve_device
from regl.evaluation.scoring import EvaluateParams
from regl.generator.quality import client_quality, quality_report
from regl.data.imageset import CacheBudget, open_images
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.evaluation.reference_classifier import load_reference
from regl.core.stage import pipeline_paths, stage, write_json

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    clients: Path = typer.Option(PATHS.data.clients),
    synthetic: Path = typer.Option(PATHS.data.synthetic),
    vanilla: Path = typer.Option(PATHS.data.vanilla),
    reference: Path = typer.Option(PATHS.models.reference_classifier),
    metrics: Path = typer.Option(PATHS.metrics.generator),
) -> None:
    with stage("generator_quality", params) as log:
        exp = load_experiment(params)
        p = load_section(params, "evaluate", EvaluateParams)
        device = resolve_device(p.device, "evaluate.device")
        model, config = load_reference(reference)
        model.to(device)
        per_client, per_class = {}, []
        for c in exp.clients:
            budget = CacheBudget(p.cache_mb)  # one client's images at a time
            shards = [open_images([client_file(d, c)], config["channels"], budget)
                      for d in (clients, synthetic, vanilla)]
            q, hits = client_quality(model, *shards, device, p)
            per_client[client_name(c)] = q
            per_class.append(hits)
            log.info("%s: classifiability %.3f, Fréchet vanilla %s -> adapted %s (class by class)", client_name(c),
                     q["classifiability"], q["frechet_vanilla"], q["frechet_adapted"])
        report = quality_report(per_client, per_class, config["class_names"])
        write_json(metrics, report)
        log.info("classifiability %.3f; adapted closer than vanilla for %d of %d clients", report["classifiability"],
                 report["clients_adapted_closer"], report["clients"])


if __name__ == "__main__":
    app()
