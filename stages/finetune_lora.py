"""Stage `finetune_lora`: fine-tune one LoRA adapter per client on the base generator's U-Net, each on that
client's images only.

Writes models/lora/client_<id>/ for every client in params.yaml's `clients` (pytorch_lora_weights.safetensors,
loadable with `load_lora_weights`, and training.json with a few training figures). Reads `finetune.*`, and
`generate.{scheduler,steps,batch_size}` for the prior images when `finetune.prior_images_per_class` > 0.

The clients run one after another in this one process: an adapter depends only on its client's images and
(seed, client), so it has the bytes a process of its own would write, and the libraries' import (about 7 s,
docs/performance.md) is paid once, not once a client.
"""

from pathlib import Path

import typer

from regl.core.checkpoint import CHECKPOINT_DIR
from regl.generator.lora import FinetuneParams, finetune_client
from regl.generator.sample import GenerateParams
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.core.stage import pipeline_paths, stage

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    client: list[int] = typer.Option(None, help="only this client (repeatable); default: every one in `clients`"),
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    generator: Path = typer.Option(PATHS.models.generator, help="the base generator (pretrain_generator)"),
    clients: Path = typer.Option(PATHS.data.clients, help="client training shards"),
    out: Path = typer.Option(PATHS.models.lora, help="one adapter folder per client goes here"),
) -> None:
    with stage("finetune_lora", params) as log:
        ids = client or load_experiment(params).clients
        p = load_section(params, "finetune", FinetuneParams)
        sampler = load_section(params, "generate", GenerateParams)
        for cid in ids:
            # the training state while it runs: a killed run resumes from its last checkpoint (a tenth of the steps)
            finetune_client(generator, client_file(clients, cid), p, sampler, cid, out / client_name(cid), log,
                            CHECKPOINT_DIR / f"finetune_lora_{client_name(cid)}.pt")


if __name__ == "__main__":
    app()
