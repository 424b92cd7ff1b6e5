"""Build the algorithm named by ``train.algorithm`` from its params, and say which network it trains."""

from __future__ import annotations

from regl.federated.algorithm import Algorithm
from regl.federated.algorithms import FedAvgM, FedNova, FedOpt, FedProx
from regl.federated.moon import Moon
from regl.federated.scaffold import Scaffold
from regl.federated.train_params import TrainParams


def build_algorithm(p: TrainParams) -> Algorithm:
    name, w = p.algorithm, p.weighting
    if name == "fedavg":
        return Algorithm(w)
    if name == "fedprox":
        return FedProx(p.fedprox.mu, w)
    if name == "scaffold":
        return Scaffold(p.scaffold.server_lr, w)
    if name == "fednova":
        return FedNova(w)
    if name == "fedavgm":
        return FedAvgM(p.fedavgm.server_lr, p.fedavgm.momentum, w)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        o = p.fedopt
        return FedOpt(name.removeprefix("fed"), o.server_lr, o.beta1, o.beta2, o.tau, o.v_init, o.bias_correction, w)
    if name == "moon":
        return Moon(p.moon.mu, p.moon.temperature, w)
    raise ValueError(f"unknown algorithm {name}")  # params validation lists the valid names first


def projection_dim(p: TrainParams) -> int:
    """MOON trains its published network, with a projection head of this width (0: the plain model)."""
    return p.moon.projection_dim if p.algorithm == "moon" else 0
