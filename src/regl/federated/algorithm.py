"""The contract between the federated engine and an algorithm.

A round: the server sends the global weights plus ``broadcast()``; each selected client trains locally with
the algorithm's ``loss`` and ``after_step`` hooks, then ``client_result`` turns its new weights into what it
sends back (and updates the client's own state, which stays on the client); the server calls ``aggregate``.
Everything an algorithm keeps between rounds is in ``server_state`` and the per-client state dicts, which
the engine checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regl.federated.weights import Weights, cast_like, weighted_sum


@dataclass
class ClientResult:
    client: int
    weights: Weights
    num_samples: int
    steps: int  # local optimizer steps K_i
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class LocalContext:
    """What a client knows during local training."""

    client: int
    global_weights: Weights
    broadcast: dict[str, Any]
    state: dict[str, Any]  # this client's own persistent state (SCAFFOLD's c_i, MOON's previous model)
    lr: float
    momentum: float
    mask: list[bool]  # which weights are parameters


class Algorithm:
    """FedAvg; subclasses override the hooks they change."""

    name = "fedavg"

    def __init__(self) -> None:
        self.server_state: dict[str, Any] = {}

    # --- client side ------------------------------------------------------------------------------------
    def begin_local(self, ctx: LocalContext, model: nn.Module) -> None:
        """Called before local training, with the model already holding the global weights."""

    def loss(self, ctx: LocalContext, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The local objective on one batch (runs the forward pass)."""
        return F.cross_entropy(model(x), y)

    def after_step(self, ctx: LocalContext, model: nn.Module) -> None:
        """Called after every local optimizer step."""

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        return ClientResult(ctx.client, weights, num_samples, steps)

    # --- server side ------------------------------------------------------------------------------------
    def broadcast(self) -> dict[str, Any]:
        return {}

    def aggregate(self, global_weights: Weights, results: list[ClientResult], num_clients: int) -> Weights:
        return cast_like(self.average(results), global_weights)

    @staticmethod
    def average(results: list[ClientResult]) -> Weights:
        """Σ p_i y_i in float64, p_i = n_i / Σ n."""
        total = sum(r.num_samples for r in results)
        return weighted_sum([r.weights for r in results], [r.num_samples / total for r in results])
