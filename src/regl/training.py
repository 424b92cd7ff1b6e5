"""Supervised training pieces shared by every stage that trains a classifier.

``train_epochs`` is the one SGD loop: the federated engine's local update calls it with an algorithm's hooks,
the reference classifier and the centralized baseline call it without.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from regl.errors import ReglError
from regl.seeding import derive_seed

LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[nn.Module], None]


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The torch device for a ``device`` param: auto = CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReglError(f"params.yaml: {key} = {name!r}: no CUDA device here (use auto or cpu)")
    return torch.device(name)


@dataclass(frozen=True)
class SGDConfig:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4


def batch_order(n: int, batch_size: int, seed: int, *keys: object) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches (the last may be short)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, *keys))
    return list(torch.randperm(n, generator=gen).split(batch_size))


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: SGDConfig, seed: int, *keys: object,
                 loss_hook: LossHook | None = None, after_step: StepHook | None = None,
                 device: torch.device | str = "cpu", before_step: StepHook | None = None) -> int:
    """Plain SGD over (x, y) for ``cfg.epochs``; returns the number of optimizer steps taken.

    ``loss_hook(model, xb, yb)`` runs the forward pass and returns the loss (default: cross-entropy of
    ``model(xb)``); ``before_step(model)`` runs between the backward pass and the optimizer step (it may change
    the gradients: SCAFFOLD's correction), ``after_step(model)`` after every optimizer step. Batches are
    shuffled by (seed, keys, epoch).
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = 0
    for epoch in range(cfg.epochs):
        for idx in batch_order(len(y), cfg.batch_size, seed, *keys, "epoch", epoch):
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = loss_hook(model, xb, yb) if loss_hook else F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step(model)
            opt.step()
            if after_step is not None:
                after_step(model)
            steps += 1
    return steps


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for every row of x, in batches, in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy and mean cross-entropy on (x, y)."""
    if len(y) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    logits = predict(model, x, batch_size, device)
    return {"accuracy": (logits.argmax(1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item()}


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """Penultimate features (``model.features``) of every row of x."""
    model.eval()
    return torch.cat([model.features(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
