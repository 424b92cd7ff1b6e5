"""Stage `generate@<id>`: synthetic images of every class from the base generator + this client's LoRA.

Writes data/synthetic/client_<id>.parquet (the adapted images: `generate.images_per_class` per class, the
shard federated training reads), data/vanilla/client_<id>.parquet (the same seeds at LoRA scale 0, for the
client's own classes in full and one per other class: the comparison the quality figures need) and
plots/generator/client_<id>.png (real / vanilla / adapted, one row per class).
"""

from pathlib import Path

import numpy as np
import typer

from regl.generator.base import load_pipeline
from regl.generator.grid import sample_grid
from regl.generator.lora import load_lora
from regl.generator.params import GenerateParams
from regl.generator.sample import generate, per_class
from regl.generator.space import to_data
from regl.images import encode_many
from regl.naming import client_name
from regl.params import load_section
from regl.plots import save_figure
from regl.shards import Shard, read_shard, write_shard
from regl.stage import stage

app = typer.Typer(add_completion=False)


def synthetic_shard(pixels: np.ndarray, labels: np.ndarray, prompts: list[str], class_names: list[str],
                    client: int, kind: str, scale: float) -> Shard:
    within = np.zeros(len(labels), np.int64)  # running index of each image within its class
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        within[rows] = np.arange(len(rows))
    ids = [f"{client_name(client)}/{kind}/{class_names[k]}/{j}" for k, j in zip(labels, within)]
    return Shard(images=encode_many(pixels), labels=labels, class_names=class_names,
                 columns={"source": ["synthetic"] * len(labels), "id": ids, "client": [client] * len(labels),
                          "prompt": prompts},
                 meta={"client": client, "split": kind, "lora_scale": scale})


@app.command()
def main(
    client: int = typer.Option(..., help="client id"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    generator: Path = typer.Option(Path("models/generator"), help="the base generator"),
    lora: Path = typer.Option(Path("models/lora"), help="the client adapters (finetune_lora)"),
    clients: Path = typer.Option(Path("data/clients"), help="client training shards"),
    out: Path = typer.Option(Path("data/synthetic"), help="synthetic shards"),
    vanilla_out: Path = typer.Option(Path("data/vanilla"), help="LoRA-scale-0 comparison shards"),
    grids: Path = typer.Option(Path("plots/generator"), help="sample grids"),
) -> None:
    with stage("generate") as log:
        g = load_section(params, "generate", GenerateParams)
        name = client_name(client)
        real = read_shard(clients / f"{name}.parquet")
        names, held = real.class_names, real.class_counts() > 0
        pixels = real.pixels()
        size, channels = pixels.shape[1], pixels.shape[3]
        pipe = load_pipeline(generator)
        k = len(names)
        prompts, latents, labels = per_class(pipe, g.prompt, names, [g.images_per_class] * k, g.seed, "generate",
                                             client)
        # Vanilla images reuse the adapted images' noise (same seeds), so the two differ by the LoRA alone.
        first = {c: np.flatnonzero(labels == c) for c in range(k)}
        keep = np.concatenate([first[c] if held[c] else first[c][:1] for c in range(k)])
        vanilla = to_data(generate(pipe, [prompts[i] for i in keep], latents[keep], g, desc="vanilla"),
                          size, channels)
        load_lora(pipe, lora / name)
        adapted = to_data(generate(pipe, prompts, latents, g, g.lora_scale, desc="adapted"), size, channels)
        log.info("client %d: %d adapted and %d vanilla images at %d px", client, len(adapted), len(vanilla), size)

        rows = []
        for c in range(k):
            real_row = np.flatnonzero(real.labels == c)
            rows.append((names[c], pixels[real_row[0]] if len(real_row) else None,
                         vanilla[np.flatnonzero(labels[keep] == c)[0]], adapted[first[c][0]]))
        write_shard(out / f"{name}.parquet", synthetic_shard(adapted, labels, prompts, names, client, "synthetic",
                                                             g.lora_scale))
        write_shard(vanilla_out / f"{name}.parquet", synthetic_shard(vanilla, labels[keep], [prompts[i] for i in keep],
                                                                     names, client, "vanilla", 0.0))
        save_figure(sample_grid(rows, f"{name}: {g.prompt}", g.lora_scale), grids / f"{name}.png")


if __name__ == "__main__":
    app()
