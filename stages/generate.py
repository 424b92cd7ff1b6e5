"""Stage `generate@<id>`: synthetic images of every class from the base generator + this client's LoRA.

Writes data/synthetic/client_<id>.parquet (the adapted images: `generate.images_per_class` per class, the
shard federated training reads), data/vanilla/client_<id>.parquet (the same seeds at LoRA scale 0, for the
client's own classes in full and one per other class: the comparison the quality figures need) and
plots/generator/client_<id>.png (real / vanilla / adapted, one row per class).
"""

from pathlib import Path

import typer

from regl.generator.base import load_pipeline
from regl.generator.generate import GenerateParams, synthesize
from regl.generator.grid import sample_grid
from regl.naming import client_file, client_name
from regl.params import load_section
from regl.plots import save_figure
from regl.shards import read_shard, write_shard
from regl.stage import stage

app = typer.Typer(add_completion=False)


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
    with stage("generate", params) as log:
        g = load_section(params, "generate", GenerateParams)
        real = read_shard(client_file(clients, client))
        result = synthesize(load_pipeline(generator), real, lora / client_name(client), g, client)
        log.info("client %d: %d adapted and %d vanilla images", client, len(result.adapted), len(result.vanilla))
        write_shard(client_file(out, client), result.adapted)
        write_shard(client_file(vanilla_out, client), result.vanilla)
        save_figure(sample_grid(result.grid, f"{client_name(client)}: {g.prompt}", g.lora_scale),
                    client_file(grids, client, ".png"))


if __name__ == "__main__":
    app()
