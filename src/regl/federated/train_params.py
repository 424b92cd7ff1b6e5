"""The `train` params section: the federated run and each algorithm's own hyper-parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from regl.core.params import Device, Section
from regl.training.loop import SGDParams


class FedProxParams(Section):
    mu: float = Field(0.01, ge=0)


class ScaffoldParams(Section):
    server_lr: float = Field(1.0, gt=0)


class FedAvgMParams(Section):
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class FedOptParams(Section):
    server_lr: float = Field(0.01, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    v_init: Literal["tau_squared", "zero"] = "tau_squared"  # Reddi et al.: v starts at τ²; Flower: at 0
    bias_correction: bool = False  # fedadam only: Adam's bias correction of η, as Flower's FedAdam does


class MoonParams(Section):
    mu: float = Field(0.1, ge=0)
    temperature: float = Field(0.5, gt=0)
    projection_dim: int = Field(256, ge=1)  # output width of MOON's projection head (the paper's code: 256)


class FlowerParams(Section):
    """train.engine: flower — what each simulated client (a Ray actor) is given, and what the nodes do."""

    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0)
    # ReGL's client side where the data is: before round 1 every node fine-tunes its LoRA and generates its
    # synthetic shard itself (regl.federated.node_side); false: nodes read synthetic shards the pipeline made
    generate_on_nodes: bool = False
    # seconds the server waits for the nodes' replies to one message (a round, the generation) before it ends the
    # run naming the nodes that did not answer; null: no limit
    reply_timeout_s: float | None = Field(None, gt=0)
    # a JSON-lines file listing every message the server receives: its kind, node, records, array shapes and metric
    # names (the audit of what left the nodes); null: none
    message_log: str | None = None


ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fednova", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "moon")


class TrainParams(SGDParams):
    """Stage federated_train; the local SGD fields (batch_size, lr, momentum, weight_decay) come from SGDParams.

    Defaults are the default recipe (docs/algorithms.md): lr 0.05, 2 local epochs, batch 64, 20 rounds."""

    lr: float = Field(0.05, gt=0)
    algorithm: Literal[ALGORITHMS] = "fedavg"  # type: ignore[valid-type]
    synthetic: bool = True  # ReGL: real + synthetic shards; False = real images only
    model: Literal["cnn", "resnet18"] = "cnn"
    rounds: int = Field(20, ge=1)
    local_epochs: int = Field(2, ge=1)
    # K: a fixed number of local SGD steps per round instead of local_epochs passes (None = epochs)
    local_steps: int | None = Field(None, ge=1)
    client_fraction: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    engine: Literal["local", "flower"] = "local"
    # aggregation weight n_i of each client, for every algorithm: samples (real + synthetic images) | real | uniform
    weighting: Literal["samples", "real", "uniform"] = "real"
    fedprox: FedProxParams = FedProxParams()
    scaffold: ScaffoldParams = ScaffoldParams()
    fedavgm: FedAvgMParams = FedAvgMParams()
    fedopt: FedOptParams = FedOptParams()
    moon: MoonParams = MoonParams()
    flower: FlowerParams = FlowerParams()
