"""Stage `pretrain_generator`: train tiny-sd on the public pool, or record which checkpoint to use instead.

Writes models/generator/: with generator.base = tiny, a diffusers StableDiffusionPipeline folder
(`StableDiffusionPipeline.from_pretrained("models/generator")` loads it) plus manifest.json; otherwise only
manifest.json naming the checkpoint, which the later stages load.
"""

import json
from pathlib import Path

import typer

from regl.core.atomic import atomic_dir
from regl.core.device import resolve_device
from regl.generator.base import MANIFEST, checkpoint_manifest
from regl.generator.pretrain import GeneratorParams, pretrain_tiny
from regl.generator.tinysd import write_vocabulary_files
from regl.core.params import DEFAULT_PARAMS, load_section
from regl.data.shards import read_shard
from regl.core.stage import pipeline_paths, stage
from regl.data.tensors import shard_tensors

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    public: Path = typer.Option(PATHS.data.prepared / "public.parquet", help="the public pool"),
    out: Path = typer.Option(PATHS.models.generator, help="the base generator folder"),
) -> None:
    with stage("pretrain_generator", params) as log:
        g = load_section(params, "generator", GeneratorParams)
        if g.base != "tiny":
            manifest = checkpoint_manifest(g.base, g.revision)
            with atomic_dir(out) as tmp:
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            log.info("using checkpoint %s (no pre-training)", manifest["base"])
            return
        pool = read_shard(public)
        images, labels = shard_tensors(pool)
        dev = resolve_device("auto")  # as finetune_lora and generate: CUDA when present
        log.info("training tiny-sd on %d public images (%s), shown to the U-Net as %s, on %s", len(pool),
                 "x".join(map(str, images.shape[1:])), g.public_style, dev)
        pipe = pretrain_tiny(images, labels, pool.class_names, g, dev)
        with atomic_dir(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            write_vocabulary_files(pipe.tokenizer, tmp / "tokenizer")
            manifest = {"kind": "tiny", "class_names": pool.class_names, "public_style": g.public_style}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    app()
