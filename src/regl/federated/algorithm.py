"""The contract between the federated engine and an algorithm.

A round: the server sends the global weights plus ``broadcast()``; each selected client trains locally with
the algorithm's ``loss``, ``before_step`` and ``after_step`` hooks, then ``client_result`` turns its new
weights into what it sends back (and updates the client's own state, which stays on the client); the server
calls ``aggregate``. Everything an algorithm keeps between rounds is in ``server_state`` and the per-client
state dicts, which the engine checkpoints.

Aggregation weights p_i are one stated choice for every algorithm (``train.weighting``): a client's
training images including synthetic ones (``samples``), its real images only (``real``), or 1 (``uniform``);
p_i = n_i / Σ n over the round's clients. ``aggregate`` applies an algorithm's server rule
(``server_update``) to the trainable parameters only; buffers (BatchNorm running statistics and counters)
are the p_i-weighted average of the clients', whatever the algorithm (docs/algorithms.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regl.federated.weights import Weights, cast_like, merge, parameter_mask, split, to64, weighted_sum

WEIGHTINGS = ("samples", "real", "uniform")


@dataclass
class ClientResult:
    client: int
    weights: Weights
    num_samples: int  # training images, synthetic ones included
    steps: int  # local optimizer steps K_i
    extras: dict[str, Any] = field(default_factory=dict)
    num_real: int | None = None  # real training images (None: all of num_samples are real)


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

    def __init__(self, weighting: str = "samples") -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.server_state: dict[str, Any] = {}
        self.mask: list[bool] | None = None  # which weights are trainable parameters; None: all of them

    def bind(self, model: nn.Module) -> None:
        """The server's model: tells ``aggregate`` which weights are parameters and which are buffers."""
        self.mask = parameter_mask(model)

    # --- client side ------------------------------------------------------------------------------------
    def begin_local(self, ctx: LocalContext, model: nn.Module) -> None:
        """Called before local training, with the model already holding the global weights."""

    def loss(self, ctx: LocalContext, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The local objective on one batch (runs the forward pass)."""
        return F.cross_entropy(model(x), y)

    def before_step(self, ctx: LocalContext, model: nn.Module) -> None:
        """Called after every backward pass, before the optimizer step (gradients are in ``p.grad``)."""

    def after_step(self, ctx: LocalContext, model: nn.Module) -> None:
        """Called after every local optimizer step."""

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        return ClientResult(ctx.client, weights, num_samples, steps)

    # --- server side ------------------------------------------------------------------------------------
    def broadcast(self) -> dict[str, Any]:
        return {}

    def sizes(self, results: list[ClientResult]) -> list[int]:
        """The integer n_i behind the aggregation weights p_i = n_i / Σ n, per ``weighting``."""
        if self.weighting == "uniform":
            return [1] * len(results)
        if self.weighting == "real":
            return [r.num_samples if r.num_real is None else r.num_real for r in results]
        return [r.num_samples for r in results]

    def coefficients(self, results: list[ClientResult]) -> list[float]:
        n = self.sizes(results)
        total = sum(n)
        if total <= 0:
            raise ValueError(f"aggregation weights ({self.weighting}) sum to zero over clients "
                             f"{[r.client for r in results]}")
        return [ni / total for ni in n]

    def aggregate(self, global_weights: Weights, results: list[ClientResult], num_clients: int) -> Weights:
        """The new global weights: ``server_update`` on the parameters, the p-weighted mean of the buffers."""
        mask = self.mask if self.mask is not None else [True] * len(global_weights)
        p = self.coefficients(results)
        x, _ = split(global_weights, mask)
        ys, bufs = zip(*(split(r.weights, mask) for r in results))
        params = self.server_update(to64(x), list(ys), p, results, num_clients)
        buffers = weighted_sum(list(bufs), p)
        return cast_like(merge(params, buffers, mask), global_weights)

    def server_update(self, x: Weights, ys: list[Weights], p: list[float], results: list[ClientResult],
                      num_clients: int) -> Weights:
        """The server rule on the trainable parameters: x (float64, the global ones), each client's y_i, the
        aggregation weights p_i; returns the new parameters in float64. FedAvg: Σ p_i y_i."""
        return weighted_sum(ys, p)
