"""Generate images with a (LoRA-adapted) pipeline: seeded latents per class, batched calls, a chosen scheduler,
sized by the `generate` params section."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from pydantic import Field, field_validator
from tqdm import tqdm

from regl.generator.layout import channels_last
from regl.generator.text import has_class_slot
from regl.core.params import Section
from regl.core.seeding import derive_seed


class GenerateParams(Section):
    """Stage generate: synthetic images of every class from the base + the client's LoRA."""

    prompt: str = "A photo of {class}, real world images, high resolution"
    lora_scale: float = Field(0.8, ge=0, le=2)
    guidance_scale: float = Field(5.0, ge=0)
    scheduler: Literal["dpm", "ddim", "euler", "pndm"] = "dpm"
    steps: int = Field(12, ge=1)
    images_per_class: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    chunk_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    oracle: bool = False  # an ablation: public-pool images in place of generated ones (regl.generator.oracle)

    @property
    def chunk(self) -> int:
        """Images per resumable chunk: ``chunk_size`` rounded up to whole batches, so a chunked run makes the same
        batches (and the same pixels) as one call over all images."""
        return -(-self.chunk_size // self.batch_size) * self.batch_size

    _prompt = field_validator("prompt")(classmethod(lambda cls, v: has_class_slot(v)))


SCHEDULERS = {"dpm": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
              "pndm": PNDMScheduler}


def set_scheduler(pipe, name: str) -> None:
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)


def class_latents(pipe, n: int, seed: int, *keys: object) -> torch.Tensor:
    """``n`` initial latents from a generator keyed by (seed, keys): the same keys give the same noise, whatever
    else is generated in the same run."""
    side = pipe.unet.config.sample_size
    gen = torch.Generator().manual_seed(derive_seed(seed, *keys))
    return torch.randn((n, pipe.unet.config.in_channels, side, side), generator=gen)


@torch.no_grad()
def generate(pipe, prompts: list[str], latents: torch.Tensor, cfg: GenerateParams, lora_scale: float | None = None,
             desc: str = "generate") -> np.ndarray:
    """One image per (prompt, latent) pair: (N, S, S, C) float in [0, 1], in batches of ``cfg.batch_size``."""
    set_scheduler(pipe, cfg.scheduler)
    kwargs = {} if lora_scale is None else {"cross_attention_kwargs": {"scale": float(lora_scale)}}
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    out = []
    starts = range(0, len(prompts), cfg.batch_size)
    with channels_last(pipe.unet, pipe.vae):  # about a tenth off a sampling step on 2 CPU cores (docs/performance.md)
        for i in tqdm(starts, desc=desc, disable=len(starts) < 2, mininterval=5):
            batch = pipe(prompt=prompts[i : i + cfg.batch_size], num_inference_steps=cfg.steps,
                         guidance_scale=cfg.guidance_scale, latents=latents[i : i + cfg.batch_size].to(dev, dtype),
                         output_type="np", **kwargs)
            out.append(np.asarray(batch.images, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 1), np.float32)


def per_class(pipe, template: str, class_names: list[str], counts: list[int], seed: int,
              *keys: object) -> tuple[list[str], torch.Tensor, np.ndarray]:
    """Prompts, latents and labels for ``counts[k]`` images of each class k; latents keyed by (seed, keys, k)."""
    prompts, latents, labels = [], [], []
    for k, (name, n) in enumerate(zip(class_names, counts)):
        if n <= 0:
            continue
        prompts += [template.format(**{"class": name})] * n
        latents.append(class_latents(pipe, n, seed, *keys, k))
        labels += [k] * n
    if not latents:
        return [], torch.zeros(0), np.zeros(0, np.int64)
    return prompts, torch.cat(latents), np.asarray(labels, np.int64)


def class_rows(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The rows :func:`per_class` makes for ``counts``: each row's class, and its index within its class."""
    labels = np.repeat(np.arange(len(counts)), np.maximum(counts, 0)).astype(np.int64)
    within = np.concatenate([np.arange(max(n, 0)) for n in counts]).astype(np.int64) if len(counts) else labels
    return labels, within


def row_latents(pipe, labels: np.ndarray, within: np.ndarray, counts: list[int], seed: int,
                *keys: object) -> torch.Tensor:
    """The latents :func:`per_class` gives rows (``labels[i]``, ``within[i]``), for any subset of its rows: each
    class's ``counts[k]`` latents are drawn whole and the rows taken, so a chunk's noise does not depend on where
    the chunk starts. Memory: one class's latents at a time."""
    side, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    out = torch.empty((len(labels), channels, side, side))
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        drawn = class_latents(pipe, counts[k], seed, *keys, int(k))
        out[torch.from_numpy(rows)] = drawn[torch.from_numpy(within[rows])]
    return out
