"""Stage generate's work for one client: synthetic images of every class from the base generator and the
client's LoRA, made and written in chunks.

``synthesize`` writes the adapted images (the client's synthetic shard) and the vanilla images from the same
noise at LoRA scale 0 (the comparison the quality figures need), and returns the rows of its sample grid. Each
chunk of ``generate.chunk`` images is written to its own file as soon as it is made (:class:`regl.core.chunks.Chunks`),
so memory holds one chunk, and a killed run resumes from its last finished chunk. A chunk's noise is keyed by
(seed, client, class) and its batches are the batches one uninterrupted call makes, so the outputs, assembled
from the chunks, are the same bytes however often the run was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from regl.core.chunks import Chunks, run_key
from regl.generator.base import load_pipeline
from regl.generator.lora import load_lora
from regl.generator.sample import GenerateParams, class_rows, generate, row_latents
from regl.generator.space import to_data
from regl.data.images import encode_many
from regl.data.naming import client_name
from regl.data.shards import Shard, iter_rows, read_labels, read_meta, write_pieces


def synthetic_shard(pixels: np.ndarray, labels: np.ndarray, within: np.ndarray, prompts: list[str],
                    class_names: list[str], client: int, kind: str, scale: float) -> Shard:
    """Generated images as a shard, each with its provenance id ``client_<id>/<kind>/<class>/<index in class>``."""
    ids = [f"{client_name(client)}/{kind}/{class_names[k]}/{j}" for k, j in zip(labels, within)]
    return Shard(images=encode_many(pixels), labels=labels, class_names=class_names,
                 columns={"source": ["synthetic"] * len(labels), "id": ids, "client": [client] * len(labels),
                          "prompt": prompts},
                 meta={"client": client, "split": kind, "lora_scale": scale})


GridRow = tuple[str, "np.ndarray | None", np.ndarray, np.ndarray]


@dataclass
class Synthesis:
    adapted: int  # images written to the synthetic shard: images_per_class of every class
    vanilla: int  # images written to the vanilla shard: all of the client's own classes, one of each other class
    grid: list[GridRow]  # per class: (name, a real image or None, vanilla, adapted)
    made: list[tuple[str, int]] = field(default_factory=list)  # the chunks this run generated (the rest resumed)


def _pixels_of(path: Path, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Decoded images of the given rows of a shard, by row."""
    order = np.unique(rows)
    pieces = list(iter_rows(path, order))
    pixels = [p for piece in pieces for p in piece.pixels()] if order.size else []
    return dict(zip(order.tolist(), pixels))


def synthesize(pipe, real_file: Path, adapter: Path, g: GenerateParams, client: int, out: Path, vanilla_out: Path,
               chunks: Chunks, on_chunk: Callable[[str, int], None] | None = None) -> Synthesis:
    """Vanilla images first (the base pipeline), then the client's adapter is loaded into ``pipe`` and the
    adapted images come from the same latents, so the two differ by the LoRA alone. Chunks already in
    ``chunks`` are not made again; ``on_chunk(kind, index)`` is called after each chunk this run makes."""
    real_labels, names = read_labels(real_file)
    k = len(names)
    held = np.bincount(real_labels, minlength=k) > 0
    first_real = {c: int(np.flatnonzero(real_labels == c)[0]) for c in range(k) if held[c]}
    real = _pixels_of(real_file, np.array(sorted(first_real.values()), np.int64))
    size, channels = next(iter(real.values())).shape[0], next(iter(real.values())).shape[2]

    counts = [g.images_per_class] * k
    labels, within = class_rows(counts)
    first = {c: np.flatnonzero(labels == c) for c in range(k)}
    keep = np.concatenate([first[c] if held[c] else first[c][:1] for c in range(k)])
    texts = [g.prompt.format(**{"class": name}) for name in names]
    made: list[tuple[str, int]] = []
    adapter_loaded = False
    for kind, rows, scale, path in (("vanilla", keep, None, vanilla_out),
                                    ("synthetic", np.arange(len(labels)), g.lora_scale, out)):
        starts = range(0, len(rows), g.chunk)
        for index, start in enumerate(starts):
            if chunks.done(kind, index):
                continue
            if scale is not None and not adapter_loaded:
                load_lora(pipe, adapter, scale)
                adapter_loaded = True
            r = rows[start : start + g.chunk]
            prompts = [texts[c] for c in labels[r]]
            latents = row_latents(pipe, labels[r], within[r], counts, g.seed, "generate", client)
            pixels = np.concatenate([  # one batch at a time to data pixels: memory holds one batch of floats
                to_data(generate(pipe, prompts[b : b + g.batch_size], latents[b : b + g.batch_size], g),
                        size, channels)
                for b in range(0, len(r), g.batch_size)])
            chunks.write(kind, index, synthetic_shard(pixels, labels[r], within[r], prompts, names, client, kind,
                                                      0.0 if scale is None else scale))
            made.append((kind, index))
            if on_chunk is not None:
                on_chunk(kind, index)
        files = [chunks.path(kind, i) for i in range(len(starts))]
        write_pieces(path, names, read_meta(files[0]), (piece for f in files for piece in iter_rows(f)))

    vanilla = _pixels_of(vanilla_out, np.array([np.flatnonzero(labels[keep] == c)[0] for c in range(k)]))
    adapted = _pixels_of(out, np.array([first[c][0] for c in range(k)]))
    grid = [(names[c], real.get(first_real.get(c, -1)), vanilla[int(np.flatnonzero(labels[keep] == c)[0])],
             adapted[int(first[c][0])]) for c in range(k)]
    return Synthesis(adapted=len(labels), vanilla=len(keep), grid=grid, made=made)


def synthetic_key(generator: Path, adapter: Path, real_file: Path, g: GenerateParams, client: int) -> str:
    """The fingerprint of a generation: its params, the bytes of its inputs, the code, and torch's thread count
    (float sums, hence pixels, depend on it)."""
    config = {"generate": g.model_dump(), "client": client, "threads": torch.get_num_threads()}
    return run_key("generate", config, [generator, adapter, real_file])


def make_synthetic(generator: Path, adapter: Path, real_file: Path, g: GenerateParams, client: int, out: Path,
                   vanilla_out: Path, on_chunk: Callable[[str, int], None] | None = None,
                   partial: Path | None = None) -> Synthesis:
    """Stage generate's work for one client, also a Flower node's (regl.federated.node_side): the client's
    synthetic shard ``out`` and its vanilla comparison ``vanilla_out`` from the base generator and its adapter, made
    in chunks kept in ``partial`` (default ``<out>.partial/``) until the run completes: a rerun with the same
    fingerprint resumes from them, anything else starts over."""
    key = synthetic_key(generator, adapter, real_file, g, client)
    chunks = Chunks(partial or out.with_name(out.name + ".partial"), key)
    result = synthesize(load_pipeline(generator), real_file, adapter, g, client, out, vanilla_out, chunks, on_chunk)
    chunks.remove()
    return result
