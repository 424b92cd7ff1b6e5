"""The one SGD loop, shared by every stage that trains a classifier, and the SGD params those stages share.

The federated engine's local update calls ``train_epochs`` with an algorithm's hooks; personalize and the
reference classifier call it without.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regl.training.augment import Augment, augment
from regl.training.compute import ComputeParams, amp_dtype, autocast, in_layout, laid_out
from regl.data.imageset import Images, batches
from regl.core.seeding import derive_seed

LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[nn.Module], None]


class SGDParams(ComputeParams):
    """The SGD fields of every section that trains a classifier (train, personalize, reference_classifier), with
    how it runs (``ComputeParams``) and the training batches' augmentation."""

    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    augment: Augment = "none"


def batch_order(n: int, batch_size: int, seed: int, *keys: object) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches (the last may be short)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, *keys))
    return list(torch.randperm(n, generator=gen).split(batch_size))


def train_epochs(model: nn.Module, data: Images, sgd: SGDParams, epochs: int, seed: int, *keys: object,
                 loss_hook: LossHook | None = None, after_step: StepHook | None = None,
                 device: torch.device | str = "cpu", before_step: StepHook | None = None,
                 steps: int | None = None) -> int:
    """SGD over ``data`` for ``epochs``, or, given ``steps``, for exactly that many optimizer steps (as many
    passes over the data as it takes, the last one cut short; ``epochs`` is then unused); returns the number of
    optimizer steps taken.

    ``loss_hook(model, xb, yb)`` runs the forward pass and returns the loss (default: cross-entropy of
    ``model(xb)``); ``before_step(model)`` runs between the backward pass and the optimizer step (it may change
    the gradients: SCAFFOLD's correction), ``after_step(model)`` after every optimizer step. Batches are
    shuffled by (seed, keys, epoch) and augmented by (seed, keys, epoch, batch), so the first steps of a step
    budget are the first steps of the epochs. Precision, memory layout and loader workers come from ``sgd``.
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(sgd, device) == torch.float16)
    model.train()
    taken, epoch = 0, 0
    with subnormals_flushed(), laid_out(model, sgd, device) as fmt:
        opt = torch.optim.SGD(model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
        while (taken < steps) if steps is not None else (epoch < epochs):
            order = batch_order(len(data), sgd.batch_size, seed, *keys, "epoch", epoch)
            if steps is not None:
                order = order[: steps - taken]
            for b, (xb, yb) in enumerate(batches(data, order, device, sgd.loader_workers, sgd.prefetch)):
                xb = augment(xb, sgd.augment, seed, *keys, "epoch", epoch, "batch", b)
                xb = in_layout(xb, fmt)
                with autocast(sgd, device):
                    loss = loss_hook(model, xb, yb) if loss_hook else F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)  # the hooks see true gradients (no-op unless fp16)
                if before_step is not None:
                    before_step(model)
                scaler.step(opt)
                scaler.update()
                if after_step is not None:
                    after_step(model)
                taken += 1
            epoch += 1
    return taken


def _flushing_subnormals() -> bool:
    return (torch.tensor([1e-310], dtype=torch.float64) * 1.0).item() == 0.0


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Flush subnormal floats to zero inside the block, and restore the processor's previous mode after it.

    Subnormals (the gradients of a trained GroupNorm cnn at lr 0.05 reach them) make CPU arithmetic many times
    slower: measured, a federated round of trained models took 2x a centralized epoch from init; flushed, 0.9-1.1x.
    The mode is process-wide processor state, so it must not leak: other code in the process (hypothesis, numpy)
    relies on IEEE subnormals.
    """
    was = _flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def samples_seen(n: int, batch_size: int, steps: int) -> int:
    """How many images ``steps`` optimizer steps over ``n`` images in batches of ``batch_size`` process (the
    last batch of each pass may be short, as ``batch_order`` cuts it)."""
    per_pass = -(-n // batch_size)
    passes, rest = divmod(steps, per_pass)
    return passes * n + rest * batch_size
