"""The `train` params section: the federated run and each algorithm's own hyper-parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from regl.params import Device, Section
from regl.training import SGDParams


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


class MoonParams(Section):
    mu: float = Field(5.0, ge=0)
    temperature: float = Field(0.5, gt=0)


class FlowerParams(Section):
    """train.engine: flower — what each simulated client (a Ray actor) is given."""

    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0)


ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fednova", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "moon")


class TrainParams(SGDParams):
    """Stage federated_train; the local SGD fields (batch_size, lr, momentum, weight_decay) come from SGDParams."""

    algorithm: Literal[ALGORITHMS] = "fedavg"  # type: ignore[valid-type]
    synthetic: bool = False
    model: Literal["cnn", "resnet18"] = "cnn"
    rounds: int = Field(20, ge=1)
    local_epochs: int = Field(1, ge=1)
    client_fraction: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    engine: Literal["local", "flower"] = "local"
    fedprox: FedProxParams = FedProxParams()
    scaffold: ScaffoldParams = ScaffoldParams()
    fedavgm: FedAvgMParams = FedAvgMParams()
    fedopt: FedOptParams = FedOptParams()
    moon: MoonParams = MoonParams()
    flower: FlowerParams = FlowerParams()
