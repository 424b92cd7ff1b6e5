"""The one SGD loop, shared by every stage that trains a classifier, and the SGD params those stages share.

The federated engine's local update calls ``train_epochs`` with an algorithm's hooks; personalize and the
reference classifier call it without.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regl.params import Section
from regl.seeding import derive_seed

LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[nn.Module], None]


class SGDParams(Section):
    """The SGD fields of every section that trains a classifier (train, personalize, reference_classifier)."""

    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)


def batch_order(n: int, batch_size: int, seed: int, *keys: object) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches (the last may be short)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, *keys))
    return list(torch.randperm(n, generator=gen).split(batch_size))


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sgd: SGDParams, epochs: int, seed: int,
                 *keys: object, loss_hook: LossHook | None = None, after_step: StepHook | None = None,
                 device: torch.device | str = "cpu") -> int:
    """SGD over (x, y) for ``epochs``; returns the number of optimizer steps taken.

    ``loss_hook(model, xb, yb)`` runs the forward pass and returns the loss (default: cross-entropy of
    ``model(xb)``); ``after_step(model)`` runs after every optimizer step. Batches are shuffled by
    (seed, keys, epoch).
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
    steps = 0
    for epoch in range(epochs):
        for idx in batch_order(len(y), sgd.batch_size, seed, *keys, "epoch", epoch):
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = loss_hook(model, xb, yb) if loss_hook else F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
            steps += 1
    return steps
