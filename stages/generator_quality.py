"""Stage `generator_quality`: how classifiable the synthetic images are and how close to each client's own
images, vanilla (LoRA scale 0) against adapted. Reads the shards of the clients listed in `clients`.

Writes metrics/generator.json: totals first, then one entry per client.
"""

from pathlib import Path

import numpy as np
import typer

from regl.generator.quality import client_quality
from regl.naming import client_name
from regl.params import load_experiment
from regl.reference import load_reference
from regl.shards import read_class_names, read_shard
from regl.stage import stage, write_json

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    clients: Path = typer.Option(Path("data/clients")),
    synthetic: Path = typer.Option(Path("data/synthetic")),
    vanilla: Path = typer.Option(Path("data/vanilla")),
    reference: Path = typer.Option(Path("models/reference_classifier")),
    metrics: Path = typer.Option(Path("metrics/generator.json")),
) -> None:
    with stage("generator_quality") as log:
        exp = load_experiment(params)
        model, _ = load_reference(reference)
        per_client, per_class_hits = {}, []
        for c in exp.clients:
            name = client_name(c)
            q, per_class = client_quality(model, read_shard(clients / f"{name}.parquet"),
                                          read_shard(synthetic / f"{name}.parquet"),
                                          read_shard(vanilla / f"{name}.parquet"))
            per_client[name] = q
            per_class_hits.append(per_class)
            log.info("%s: classifiability %.3f, Fréchet vanilla %.1f -> adapted %.1f", name, q["classifiability"],
                     q["frechet_vanilla"], q["frechet_adapted"])
        total = sum(q["synthetic_images"] for q in per_client.values())
        correct = sum(q["correct"] for q in per_client.values())
        closer = sum(q["adapted_closer"] for q in per_client.values())
        names = read_class_names(synthetic / f"{client_name(exp.clients[0])}.parquet")
        class_acc = np.mean(per_class_hits, axis=0)
        write_json(metrics, {
            "classifiability": round(correct / total, 4),
            "clients_adapted_closer": closer,
            "clients": len(per_client),
            "frechet_vanilla_mean": round(float(np.mean([q["frechet_vanilla"] for q in per_client.values()])), 3),
            "frechet_adapted_mean": round(float(np.mean([q["frechet_adapted"] for q in per_client.values()])), 3),
            "classifiability_per_class": {n: round(float(a), 4) for n, a in zip(names, class_acc)},
            "per_client": per_client,
        })
        log.info("classifiability %.3f; adapted closer than vanilla for %d of %d clients", correct / total, closer,
                 len(per_client))


if __name__ == "__main__":
    app()
