"""Stage `generate@<id>`: synthetic images of every class from the base generator + this client's LoRA.

Writes data/synthetic/client_<id>.parquet (the adapted images: `generate.images_per_class` per class, the
shard federated training reads), data/vanilla/client_<id>.parquet (the same seeds at LoRA scale 0, for the
client's own classes in full and one per other class: the comparison the quality figures need) and
plots/generator/client_<id>.png (real / vanilla / adapted, one row per class). Made in chunks of
`generate.chunk_size` images kept in data/synthetic/client_<id>.parquet.partial/ until the run completes: a killed
run resumes from its last finished chunk and ends with the same bytes.
"""

from pathlib import Path

import typer

from regl.generator.generate import GenerateParams, make_synthetic
from regl.generator.grid import sample_grid
from regl.generator.oracle import oracle_grid, write_oracle
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_section
from regl.evaluation.plots import save_figure
from regl.data.shards import write_shard
from regl.core.stage import pipeline_paths, stage

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    client: int = typer.Option(..., help="client id"),
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    generator: Path = typer.Option(PATHS.models.generator, help="the base generator"),
    lora: Path = typer.Option(PATHS.models.lora, help="the client adapters (finetune_lora)"),
    clients: Path = typer.Option(PATHS.data.clients, help="client training shards"),
    out: Path = typer.Option(PATHS.data.synthetic, help="synthetic shards"),
    vanilla_out: Path = typer.Option(PATHS.data.vanilla, help="LoRA-scale-0 comparison shards"),
    grids: Path = typer.Option(PATHS.plots.generator, help="sample grids"),
    public: Path = typer.Option(PATHS.data.prepared / "public.parquet", help="public pool (generate.oracle only)"),
) -> None:
    with stage("generate", params) as log:
        g = load_section(params, "generate", GenerateParams)
        if g.oracle:  # the ablation's ceiling: no generator runs; both shards hold the same public-pool images
            shard = write_oracle(public, client_file(out, client), g, client)
            write_shard(client_file(vanilla_out, client), shard)
            save_figure(sample_grid(oracle_grid(shard), f"{client_name(client)}: oracle (public-pool images)", 0.0),
                        client_file(grids, client, ".png"))
            log.info("client %d: %d public-pool images in place of generated ones (generate.oracle)", client,
                     len(shard))
            return
        result = make_synthetic(generator, lora / client_name(client), client_file(clients, client), g, client,
                                client_file(out, client), client_file(vanilla_out, client))
        resumed = sum(-(-n // g.chunk) for n in (result.adapted, result.vanilla)) - len(result.made)
        log.info("client %d: %d adapted and %d vanilla images (%d chunk(s) made, %d resumed)", client,
                 result.adapted, result.vanilla, len(result.made), resumed)
        save_figure(sample_grid(result.grid, f"{client_name(client)}: {g.prompt}", g.lora_scale),
                    client_file(grids, client, ".png"))


if __name__ == "__main__":
    app()
