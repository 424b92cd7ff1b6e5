"""ReGL's client side on a federation node: before round 1 the node fine-tunes its LoRA on its own shard and makes
its synthetic shard, in a folder of its own; only the figures of that work leave it.

The base generator reaches the node as the files of the server's ``models/generator`` folder (tiny-sd: weights,
configs and tokenizer, about 16 MB; a real checkpoint: only the manifest naming it and its revision, which the node
loads from its own disk or Hugging Face cache). The work is done by the functions stages finetune_lora and
generate call for each client (regl.generator.lora.finetune_client, regl.generator.generate.make_synthetic), so a
node writes the bytes those stages write for the same params, inputs and torch thread count. A node keeps what it
made: a later run with the same generator, params, shard, code and thread count reuses it (the fingerprint beside
each output, ``<output>.key``), and a generation cut short resumes from its last finished chunk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from regl.core.atomic import atomic_dir, write_text
from regl.core.chunks import run_key
from regl.core.params import Params
from regl.data.naming import client_file, client_name
from regl.data.shards import read_labels

if TYPE_CHECKING:  # the generator's modules load diffusers: only a node that generates pays for the import
    from regl.generator.lora import FinetuneParams
    from regl.generator.sample import GenerateParams

log = logging.getLogger(__name__)
NODES_DIR = Path(".regl/nodes")  # where simulated nodes (no folder of their own) keep theirs, under the server's root


@dataclass(frozen=True)
class NodeWork:
    """What the server sends its nodes for ReGL's client side: the base generator's folder and the params of the
    fine-tuning and the generation; ``nodes_root`` holds the folders of nodes that name none of their own."""

    generator: Path
    finetune: FinetuneParams
    generate: GenerateParams
    nodes_root: Path

    @classmethod
    def of(cls, params: Params, generator: Path, root: Path = Path(".")) -> NodeWork:
        from regl.generator.lora import FinetuneParams
        from regl.generator.sample import GenerateParams

        return cls(generator, params.section("finetune", FinetuneParams), params.section("generate", GenerateParams),
                   root / NODES_DIR)


@dataclass(frozen=True)
class NodeFolder:
    """What a node makes and keeps, under its ``root``: the base generator as received, its client's adapter,
    synthetic shard and vanilla comparison shard."""

    root: Path

    @property
    def generator(self) -> Path:
        return self.root / "generator"

    def lora(self, client: int) -> Path:
        return self.root / "lora" / client_name(client)

    def synthetic_dir(self) -> Path:
        return self.root / "synthetic"

    def synthetic(self, client: int) -> Path:
        return client_file(self.synthetic_dir(), client)

    def vanilla(self, client: int) -> Path:
        return client_file(self.root / "vanilla", client)


def folder_arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every file of ``folder`` as its bytes (a uint8 array), by its path relative to ``folder``."""
    files = sorted(f for f in Path(folder).rglob("*") if f.is_file())
    return {f.relative_to(folder).as_posix(): np.frombuffer(f.read_bytes(), np.uint8) for f in files}


def write_folder(arrays: dict[str, np.ndarray], dest: Path) -> bool:
    """Make ``dest`` hold exactly these files (atomically); whether anything had to be written."""
    if dest.is_dir() and folder_arrays(dest).keys() == arrays.keys() and all(
            np.array_equal(a, b) for a, b in zip(folder_arrays(dest).values(), arrays.values())):
        return False
    with atomic_dir(dest) as tmp:
        for name, data in arrays.items():
            path = tmp / name
            if path.resolve().parent != tmp.resolve() and tmp.resolve() not in path.resolve().parents:
                raise ValueError(f"{name!r}: a generator file outside its folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(np.asarray(data, np.uint8).tobytes())
    return True


def _made(output: Path, key: str) -> bool:
    marker = output.with_name(output.name + ".key")
    return output.exists() and marker.is_file() and marker.read_text() == key


def _mark(output: Path, key: str) -> None:
    write_text(output.with_name(output.name + ".key"), key)


def prepare_client(client: int, real_file: Path, node: NodeFolder, cfg: FinetuneParams, g: GenerateParams,
                   on_chunk: Callable[[str, int], None] | None = None,
                   on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """The client's adapter and synthetic shard in ``node`` (the base generator already in ``node.generator``),
    each made unless the node holds it with this fingerprint; returns the figures the node reports: image
    counts, seconds, what was reused, the chunks generated. A fine-tuning or a generation cut short resumes
    (the adapter's training state in ``<adapter>.ckpt``, the generation's chunks in ``<shard>.partial/``).
    ``on_step(step)``, ``on_chunk(kind, index)``: after each fine-tuning step, each chunk made."""
    from regl.generator.generate import make_synthetic, synthetic_key
    from regl.generator.lora import finetune_client

    threads = torch.get_num_threads()
    adapter, out = node.lora(client), node.synthetic(client)
    start = time.monotonic()
    lora_key = run_key("finetune_lora", {"finetune": cfg.model_dump(), "generate": g.model_dump(),
                                         "client": client, "threads": threads}, [node.generator, real_file])
    reused_lora = _made(adapter, lora_key)
    if not reused_lora:
        finetune_client(node.generator, real_file, cfg, g, client, adapter, log,
                        adapter.with_name(adapter.name + ".ckpt"), on_step)
        _mark(adapter, lora_key)
    tuned = time.monotonic()
    key = synthetic_key(node.generator, adapter, real_file, g, client)
    reused_synthetic = _made(out, key)
    chunks = 0
    if not reused_synthetic:
        result = make_synthetic(node.generator, adapter, real_file, g, client, out, node.vanilla(client), on_chunk)
        chunks = len(result.made)
        _mark(out, key)
    labels, _ = read_labels(out)
    return {"client": client, "synthetic": len(labels), "finetune-s": round(tuned - start, 3),
            "generate-s": round(time.monotonic() - tuned, 3), "reused-lora": int(reused_lora),
            "reused-synthetic": int(reused_synthetic), "chunks-made": chunks, "threads": threads}
