"""Stage `generate`: synthetic images of every class for every client, from the base generator and that
client's LoRA.

Writes, for every client in params.yaml's `clients`: data/synthetic/client_<id>.parquet (the adapted images:
`generate.images_per_class` per class, the shard federated training reads), data/vanilla/client_<id>.parquet
(the same seeds at LoRA scale 0, for the client's own classes in full and one per other class: the comparison
the quality figures need) and plots/generator/client_<id>.png (real / vanilla / adapted, one row per class).
Each shard is made in chunks of `generate.chunk_size` images kept in .regl/checkpoints/generate_client_<id>/
(outside DVC's outputs, which DVC clears before a stage runs) until it completes: a killed run resumes from its
last finished chunk and ends with the same bytes.

The clients run one after another in this one process (their images depend only on their own inputs and
(seed, client, class): the bytes a process of their own would write), so the libraries' import is paid once.
"""

from pathlib import Path

import typer

from regl.core.checkpoint import CHECKPOINT_DIR
from regl.generator.generate import GenerateParams, make_synthetic
from regl.generator.grid import sample_grid
from regl.generator.oracle import oracle_grid, write_oracle
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.evaluation.plots import save_figure
from regl.data.shards import write_shard
from regl.core.stage import pipeline_paths, stage

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    client: list[int] = typer.Option(None, help="only this client (repeatable); default: every one in `clients`"),
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
        ids = client or load_experiment(params).clients
        g = load_section(params, "generate", GenerateParams)
        for cid in ids:
            if g.oracle:  # the ablation's ceiling: no generator runs; both shards hold the same public-pool images
                shard = write_oracle(public, client_file(out, cid), g, cid)
                write_shard(client_file(vanilla_out, cid), shard)
                save_figure(sample_grid(oracle_grid(shard), f"{client_name(cid)}: oracle (public-pool images)", 0.0),
                            client_file(grids, cid, ".png"))
                log.info("client %d: %d public-pool images in place of generated ones (generate.oracle)", cid,
                         len(shard))
                continue
            result = make_synthetic(generator, lora / client_name(cid), client_file(clients, cid), g, cid,
                                    client_file(out, cid), client_file(vanilla_out, cid),
                                    partial=CHECKPOINT_DIR / f"generate_{client_name(cid)}")
            resumed = sum(-(-n // g.chunk) for n in (result.adapted, result.vanilla)) - len(result.made)
            log.info("client %d: %d adapted and %d vanilla images (%d chunk(s) made, %d resumed)", cid,
                     result.adapted, result.vanilla, len(result.made), resumed)
            save_figure(sample_grid(result.grid, f"{client_name(cid)}: {g.prompt}", g.lora_scale),
                        client_file(grids, cid, ".png"))


if __name__ == "__main__":
    app()
