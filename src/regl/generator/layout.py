"""How tiny-sd lays out its convolutions and steps its optimizer: its three trainers (the VAE, the U-Net, the
clients' LoRA) train channels-last with the fused AdamW, 8–10 % off a step on 2 CPU cores (`python
bench/train_step_bench.py`), and the sampler runs channels-last, about a tenth off a step (docs/performance.md). The
modules leave both in the contiguous layout, the one they are saved and loaded in."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch


@contextmanager
def channels_last(*modules: torch.nn.Module) -> Iterator[None]:
    """Channels-last parameters while the block runs, contiguous again after it."""
    for m in modules:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in modules:
            m.to(memory_format=torch.contiguous_format)


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its fused step: one kernel over all tensors instead of a loop of small ones."""
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, fused=True)
