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


def local_update(model: nn.Module, algorithm: Algorithm, data: ClientData, global_weights: Weights,
                 broadcast: dict[str, Any], state: dict[str, Any], sgd: SGDConfig, seed: int, round_index: int,
                 device: torch.device | str) -> ClientResult:
    """One client's local training from the global weights: the same code under every engine (in-process here,
    inside a Flower ClientApp there). ``state`` is the client's own persistent state, updated in place."""
    set_weights(model, global_weights)
    ctx = LocalContext(data.client, global_weights, broadcast, state, sgd.lr, sgd.momentum, parameter_mask(model))
    algorithm.begin_local(ctx, model)
    steps = train_epochs(
        model, data.x, data.y, sgd, seed, "client", data.client, "round", round_index,
        loss_hook=lambda m, xb, yb: algorithm.loss(ctx, m, xb, yb),
        after_step=lambda m: algorithm.after_step(ctx, m),
        device=device,
        before_step=lambda m: algorithm.before_step(ctx, m),
    )
    result = algorithm.client_result(ctx, get_weights(model), len(data.y), steps)
    result.num_real = data.num_real  # for train.weighting: real
    return result


class Federation:
    """Global model, algorithm and client ids; ``run_round`` advances one round.

    This class trains the selected clients in-process (``train.engine: local``); the Flower engine overrides
    ``client_updates`` to send them to Flower ClientApps instead, and everything else stays the same.
    """

    def __init__(self, model_factory: Callable[[], nn.Module], algorithm: Algorithm, clients: list[ClientData],
                 sgd: SGDConfig, client_fraction: float, seed: int, device: torch.device | str = "cpu"):
        self.clients = {c.client: c for c in clients}
        self.client_ids = sorted(self.clients)
        self.model_factory = model_factory
        self.model = model_factory().to(device)
        self.algorithm = algorithm
        algorithm.bind(self.model)  # which weights are parameters (server rules) and which buffers (averaged)
        self.sgd, self.client_fraction, self.seed, self.device = sgd, client_fraction, seed, device
        self.global_weights: Weights = get_weights(self.model)
        self.client_states: dict[int, dict[str, Any]] = {cid: {} for cid in self.client_ids}
        self.round = 0  # rounds finished

    def client_updates(self, selected: list[int], broadcast: dict[str, Any]) -> list[ClientResult]:
        return [local_update(self.model, self.algorithm, self.clients[cid], self.global_weights, broadcast,
                             self.client_states[cid], self.sgd, self.seed, self.round, self.device)
                for cid in selected]

    def image_counts(self) -> tuple[int, int]:
        """(real, synthetic) training images over all clients."""
        return (sum(c.num_real for c in self.clients.values()), sum(c.num_synthetic for c in self.clients.values()))

    def run_round(self) -> list[int]:
        """Train the round's selected clients and aggregate; returns the selected client ids."""
        selected = select_clients(self.client_ids, self.client_fraction, self.seed, self.round)
        results = self.client_updates(selected, self.algorithm.broadcast())
        self.global_weights = self.algorithm.aggregate(self.global_weights, results, len(self.client_ids))
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
