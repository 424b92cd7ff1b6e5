"""Build the algorithm named by ``train.algorithm`` from its params."""

from __future__ import annotations

from regl.federated.algorithm import Algorithm
from regl.federated.algorithms import FedAvgM, FedNova, FedOpt, FedProx
from regl.federated.moon import Moon
from regl.federated.scaffold import Scaffold
from regl.federated.train_params import TrainParams


def build_algorithm(p: TrainParams) -> Algorithm:
    name = p.algorithm
    if name == "fedavg":
        return Algorithm()
    if name == "fedprox":
        return FedProx(p.fedprox.mu)
    if name == "scaffold":
        return Scaffold(p.scaffold.server_lr)
    if name == "fednova":
        return FedNova()
    if name == "fedavgm":
        return FedAvgM(p.fedavgm.server_lr, p.fedavgm.momentum)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        o = p.fedopt
        return FedOpt(name.removeprefix("fed"), o.server_lr, o.beta1, o.beta2, o.tau)
    if name == "moon":
        return Moon(p.moon.mu, p.moon.temperature)
    raise ValueError(f"unknown algorithm {name}")  # params validation lists the valid names first
