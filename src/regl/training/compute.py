"""How a stage runs a classifier on its device: mixed precision, memory layout, data loading, scoring batch.

``ComputeParams`` is params.yaml's `compute` section, shared by every stage that trains or scores a classifier
(reference_classifier, federated_train, personalize, generator_quality, evaluate): it changes speed and memory,
not the recipe, and on CPU the defaults leave every result what it was (fp32, contiguous, decoding in the
stage's process). Those stages' models (SGDParams, EvaluateParams) extend it, and the loader fills these fields
from the `compute` section.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator, Literal

import torch
from pydantic import Field
from torch import nn

from regl.core.params import Section

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ComputeParams(Section):
    shared_section: ClassVar[str | None] = "compute"

    # auto: bf16 on CUDA, fp32 elsewhere | fp32 | bf16 (autocast) | fp16 (autocast and a gradient scaler)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # channels-last tensors for convolutions (faster with mixed precision on CUDA); auto: on CUDA only. On 2 CPU
    # cores it takes a fifth off the cnn's step, but made resnet18's BatchNorm diverge on small batches there
    # (docs/performance.md), so the CPU takes it only when asked (true)
    channels_last: bool | Literal["auto"] = "auto"
    loader_workers: int = Field(0, ge=0, le=64)  # processes decoding batches; 0 = the stage's own process
    prefetch: int = Field(2, ge=1, le=64)  # batches each worker decodes ahead
    # decoded uint8 pixels a stage keeps in memory, over all its datasets (MiB); the rest is decoded per batch
    cache_mb: int = Field(64, ge=0, le=2**20)
    scoring_batch: int = Field(256, ge=1, le=65536)  # images per forward pass when scoring (no gradients)


def amp_dtype(p: ComputeParams, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if p.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _DTYPES.get(p.precision)


def autocast(p: ComputeParams, device: torch.device):
    dtype = amp_dtype(p, device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def memory_format(p: ComputeParams, device: torch.device) -> torch.memory_format:
    on = device.type == "cuda" if p.channels_last == "auto" else p.channels_last
    return torch.channels_last if on else torch.contiguous_format


def in_layout(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A batch in ``fmt`` where the format applies (images: N, C, H, W); any other input (vectors) as it is."""
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


@contextmanager
def laid_out(model: nn.Module, p: ComputeParams, device: torch.device) -> Iterator[torch.memory_format]:
    """The model in the params' memory format inside the block (yields it, for the inputs), contiguous after:
    weights leave a stage, and go to other models, in one layout."""
    fmt = memory_format(p, device)
    if fmt is torch.contiguous_format:
        yield fmt
        return
    model.to(memory_format=fmt)
    try:
        yield fmt
    finally:
        model.to(memory_format=torch.contiguous_format)
