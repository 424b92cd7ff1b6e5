"""Stage generate@<id>'s work for one client: synthetic images of every class from the base generator and the
client's LoRA.

``synthesize`` returns the adapted images (the client's synthetic shard), the vanilla images from the same
noise at LoRA scale 0 (the comparison the quality figures need), and the rows of its sample grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regl.generator.lora import load_lora
from regl.generator.sample import GenerateParams, generate, per_class
from regl.generator.space import to_data
from regl.images import encode_many
from regl.naming import client_name
from regl.shards import Shard


def synthetic_shard(pixels: np.ndarray, labels: np.ndarray, prompts: list[str], class_names: list[str],
                    client: int, kind: str, scale: float) -> Shard:
    """Generated images as a shard, each with its provenance id ``client_<id>/<kind>/<class>/<index in class>``."""
    within = np.zeros(len(labels), np.int64)  # running index of each image within its class
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        within[rows] = np.arange(len(rows))
    ids = [f"{client_name(client)}/{kind}/{class_names[k]}/{j}" for k, j in zip(labels, within)]
    return Shard(images=encode_many(pixels), labels=labels, class_names=class_names,
                 columns={"source": ["synthetic"] * len(labels), "id": ids, "client": [client] * len(labels),
                          "prompt": prompts},
                 meta={"client": client, "split": kind, "lora_scale": scale})


GridRow = tuple[str, "np.ndarray | None", np.ndarray, np.ndarray]


@dataclass
class Synthesis:
    adapted: Shard  # images_per_class of every class: the client's synthetic shard
    vanilla: Shard  # the same seeds at LoRA scale 0: all of the client's own classes, one of each other class
    grid: list[GridRow]  # per class: (name, a real image or None, vanilla, adapted)


def synthesize(pipe, real: Shard, adapter: Path, g: GenerateParams, client: int) -> Synthesis:
    """Vanilla images first (the base pipeline), then the client's adapter is loaded into ``pipe`` and the
    adapted images come from the same latents, so the two differ by the LoRA alone."""
    names, held = real.class_names, real.class_counts() > 0
    pixels = real.pixels()
    size, channels = pixels.shape[1], pixels.shape[3]
    k = len(names)
    prompts, latents, labels = per_class(pipe, g.prompt, names, [g.images_per_class] * k, g.seed, "generate", client)
    first = {c: np.flatnonzero(labels == c) for c in range(k)}
    keep = np.concatenate([first[c] if held[c] else first[c][:1] for c in range(k)])
    vanilla = to_data(generate(pipe, [prompts[i] for i in keep], latents[keep], g, desc="vanilla"), size, channels)
    load_lora(pipe, adapter)
    adapted = to_data(generate(pipe, prompts, latents, g, g.lora_scale, desc="adapted"), size, channels)
    grid = []
    for c in range(k):
        real_row = np.flatnonzero(real.labels == c)
        grid.append((names[c], pixels[real_row[0]] if len(real_row) else None,
                     vanilla[np.flatnonzero(labels[keep] == c)[0]], adapted[first[c][0]]))
    return Synthesis(
        adapted=synthetic_shard(adapted, labels, prompts, names, client, "synthetic", g.lora_scale),
        vanilla=synthetic_shard(vanilla, labels[keep], [prompts[i] for i in keep], names, client, "vanilla", 0.0),
        grid=grid,
    )
