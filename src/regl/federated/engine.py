"""The one federated training loop. Algorithms plug in through the hooks in algorithm.py.

Deterministic and resumable: client selection comes from an RNG keyed by (seed, round), local batch order
from (seed, client, round, epoch), model init from (seed, "init"); nothing reads global random state, so
the state after round r is the global weights, the algorithm's server state and the clients' states, which
``Federation.state_dict`` returns for checkpointing.

The server (``Federation``) composes a client runner: ``InProcessClients`` below (``train.engine: local``) or
Flower's (``flower_engine.FlowerClients``); both run ``local_update`` for each selected client.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from regl.data.client_data import ClientData
from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.train_params import TrainParams
from regl.federated.weights import Weights, get_weights, parameter_mask, set_weights
from regl.core.seeding import rng
from regl.training.loop import train_epochs


def select_clients(client_ids: list[int], fraction: float, seed: int, round_index: int) -> list[int]:
    """max(1, round(fraction·M)) distinct clients, sorted, drawn from an RNG keyed by (seed, round)."""
    m = max(1, round(fraction * len(client_ids)))
    if m >= len(client_ids):
        return sorted(client_ids)
    chosen = rng(seed, "select", round_index).choice(len(client_ids), size=m, replace=False)
    return sorted(client_ids[i] for i in chosen)


def local_update(model: nn.Module, algorithm: Algorithm, data: ClientData, global_weights: Weights,
                 broadcast: dict[str, Any], state: dict[str, Any], p: TrainParams, round_index: int,
                 device: torch.device | str) -> ClientResult:
    """One client's local training from the global weights: the same code under every runner (in-process here,
    inside a Flower ClientApp there). ``state`` is the client's own persistent state, updated in place."""
    set_weights(model, global_weights)
    ctx = LocalContext(data.client, global_weights, broadcast, state, p.lr, p.momentum, parameter_mask(model))
    algorithm.begin_local(ctx, model)
    steps = train_epochs(
        model, data.images, p, p.local_epochs, p.seed, "client", data.client, "round", round_index,
        loss_hook=lambda m, xb, yb: algorithm.loss(ctx, m, xb, yb),
        after_step=lambda m: algorithm.after_step(ctx, m),
        device=device, steps=p.local_steps,
        before_step=lambda m: algorithm.before_step(ctx, m),
    )
    result = algorithm.client_result(ctx, get_weights(model), len(data.images), steps)
    result.num_real = data.num_real  # for train.weighting: real
    return result


class ClientRunner(Protocol):
    """Where the selected clients' local updates run: this process, or Flower ClientApps."""

    def image_counts(self) -> tuple[int, int]:
        """(real, synthetic) training images over all clients."""

    def train(self, selected: list[int], global_weights: Weights, broadcast: dict[str, Any],
              round_index: int) -> list[ClientResult]:
        """Each selected client's local update from ``global_weights``, in the order of ``selected``."""

    def state_dict(self) -> dict[str, Any]:
        """The clients' state this side holds (checkpointed with the federation)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class InProcessClients:
    """``train.engine: local``: every client's data in this process, trained one after another on one scratch
    model; the clients' persistent states (SCAFFOLD's c_i, MOON's previous model) are kept here."""

    def __init__(self, clients: list[ClientData], model: nn.Module, algorithm: Algorithm, p: TrainParams,
                 device: torch.device | str = "cpu"):
        self.clients = {c.client: c for c in clients}
        self.model, self.algorithm, self.p, self.device = model, algorithm, p, device
        self.client_states: dict[int, dict[str, Any]] = {cid: {} for cid in sorted(self.clients)}

    def image_counts(self) -> tuple[int, int]:
        return (sum(c.num_real for c in self.clients.values()), sum(c.num_synthetic for c in self.clients.values()))

    def train(self, selected: list[int], global_weights: Weights, broadcast: dict[str, Any],
              round_index: int) -> list[ClientResult]:
        return [local_update(self.model, self.algorithm, self.clients[cid], global_weights, broadcast,
                             self.client_states[cid], self.p, round_index, self.device)
                for cid in selected]

    def state_dict(self) -> dict[str, Any]:
        return {"client_states": self.client_states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.client_states = state["client_states"]


class Federation:
    """The server: global model, algorithm, client ids and a client runner; ``run_round`` advances one round.

    Selection, broadcast and aggregation happen here whatever the runner, so both engines share them."""

    def __init__(self, model: nn.Module, algorithm: Algorithm, runner: ClientRunner, client_ids: list[int],
                 client_fraction: float, seed: int, device: torch.device | str = "cpu"):
        self.model = model.to(device)
        self.algorithm, self.runner = algorithm, runner
        algorithm.bind(self.model)  # which weights are parameters (server rules) and which buffers (averaged)
        self.client_ids = sorted(client_ids)
        self.client_fraction, self.seed, self.device = client_fraction, seed, device
        self.global_weights: Weights = get_weights(self.model)
        self.round = 0  # rounds finished
        self.last_work: list[tuple[int, int]] = []  # the last round's (training images, local steps) per client

    def run_round(self) -> list[int]:
        """Train the round's selected clients and aggregate; returns the selected client ids."""
        selected = select_clients(self.client_ids, self.client_fraction, self.seed, self.round)
        results = self.runner.train(selected, self.global_weights, self.algorithm.broadcast(), self.round)
        self.last_work = [(r.num_samples, r.steps) for r in results]
        self.global_weights = self.algorithm.aggregate(self.global_weights, results, len(self.client_ids))
        set_weights(self.model, self.global_weights)
        self.round += 1
        return selected

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "global_weights": self.global_weights,
            "server_state": self.algorithm.server_state,
            **self.runner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = state["round"]
        self.global_weights = [w.to(self.device) for w in state["global_weights"]]
        self.algorithm.server_state = state["server_state"]
        self.runner.load_state_dict(state)
        set_weights(self.model, self.global_weights)
