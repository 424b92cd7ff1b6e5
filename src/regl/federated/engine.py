"""The one federated training loop. Algorithms plug in through the hooks in algorithm.py.

Deterministic and resumable: client selection comes from an RNG keyed by (seed, round), local batch order
from (seed, client, round, epoch), model init from (seed, "init"); nothing reads global random state, so
the state after round r is the global weights, the algorithm's server state and the clients' states, which
``Federation.state_dict`` returns for checkpointing.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from regl.client_data import ClientData
from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.weights import Weights, get_weights, parameter_mask, set_weights
from regl.seeding import rng
from regl.training import SGDConfig, train_epochs


def select_clients(client_ids: list[int], fraction: float, seed: int, round_index: int) -> list[int]:
    """max(1, round(fraction·M)) distinct clients, sorted, drawn from an RNG keyed by (seed, round)."""
    m = max(1, round(fraction * len(client_ids)))
    if m >= len(client_ids):
        return sorted(client_ids)
    chosen = rng(seed, "select", round_index).choice(len(client_ids), size=m, replace=False)
    return sorted(client_ids[i] for i in chosen)


class Federation:
    """Global model, algorithm and client data; ``run_round`` advances one round."""

    def __init__(self, model_factory: Callable[[], nn.Module], algorithm: Algorithm, clients: list[ClientData],
                 sgd: SGDConfig, client_fraction: float, seed: int, device: torch.device | str = "cpu"):
        self.model_factory = model_factory
        self.model = model_factory().to(device)
        self.algorithm = algorithm
        self.clients = {c.client: c for c in clients}
        self.sgd, self.client_fraction, self.seed, self.device = sgd, client_fraction, seed, device
        self.mask = parameter_mask(self.model)
        self.global_weights: Weights = get_weights(self.model)
        self.client_states: dict[int, dict[str, Any]] = {c.client: {} for c in clients}
        self.round = 0  # rounds finished

    def local_update(self, cid: int, broadcast: dict[str, Any]) -> ClientResult:
        data = self.clients[cid]
        set_weights(self.model, self.global_weights)
        ctx = LocalContext(cid, self.global_weights, broadcast, self.client_states[cid], self.sgd.lr,
                           self.sgd.momentum, self.mask)
        self.algorithm.begin_local(ctx, self.model)
        steps = train_epochs(
            self.model, data.x, data.y, self.sgd, self.seed, "client", cid, "round", self.round,
            loss_hook=lambda m, xb, yb: self.algorithm.loss(ctx, m, xb, yb),
            after_step=lambda m: self.algorithm.after_step(ctx, m),
            device=self.device,
        )
        return self.algorithm.client_result(ctx, get_weights(self.model), len(data.y), steps)

    def run_round(self) -> list[int]:
        """Train the round's selected clients and aggregate; returns the selected client ids."""
        selected = select_clients(sorted(self.clients), self.client_fraction, self.seed, self.round)
        broadcast = self.algorithm.broadcast()
        results = [self.local_update(cid, broadcast) for cid in selected]
        self.global_weights = self.algorithm.aggregate(self.global_weights, results, len(self.clients))
        set_weights(self.model, self.global_weights)
        self.round += 1
        return selected

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "global_weights": self.global_weights,
            "server_state": self.algorithm.server_state,
            "client_states": self.client_states,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = state["round"]
        self.global_weights = [w.to(self.device) for w in state["global_weights"]]
        self.algorithm.server_state = state["server_state"]
        self.client_states = state["client_states"]
        set_weights(self.model, self.global_weights)
