"""A federated training run as the stage does it: client data in, trained global model and curve out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from regl.checkpoint import Checkpoint
from regl.client_data import ClientData, load_client
from regl.errors import ReglError
from regl.federated.engine import Federation
from regl.federated.params import TrainParams
from regl.federated.registry import build_algorithm
from regl.models import build_model
from regl.seeding import derive_seed
from regl.training import SGDConfig, evaluate

log = logging.getLogger(__name__)


def load_clients(clients: list[int], clients_dir: Path, synthetic_dir: Path, synthetic: bool,
                 channels: int) -> list[ClientData]:
    return [load_client(cid, clients_dir, synthetic_dir, synthetic, channels)
            for cid in tqdm(clients, desc="load clients", unit="client", leave=False)]


def model_factory(p: TrainParams, channels: int, num_classes: int, image_size: int) -> Callable[[], nn.Module]:
    """Builds the model with weights seeded by (train.seed, "init"), leaving global RNG state untouched."""

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(p.seed, "init"))
            return build_model(p.model, channels, num_classes, image_size)

    try:
        with torch.no_grad():
            build().eval()(torch.zeros(2, channels, image_size, image_size))
    except (ValueError, RuntimeError) as exc:
        raise ReglError(f"params.yaml: train.model = {p.model!r} does not fit {image_size} px images with "
                        f"{channels} channel(s): {str(exc).splitlines()[0]}") from None
    return build


def make_federation(p: TrainParams, clients: list[ClientData], factory: Callable[[], nn.Module],
                    device: torch.device) -> Federation:
    sgd = SGDConfig(p.local_epochs, p.batch_size, p.lr, p.momentum, p.weight_decay)
    return Federation(factory, build_algorithm(p), clients, sgd, p.client_fraction, p.seed, device)


@dataclass
class RunResult:
    federation: Federation
    curve: list[dict]


def train(fed: Federation, rounds: int, test: tuple[torch.Tensor, torch.Tensor],
          checkpoint: Checkpoint | None = None) -> RunResult:
    """Run rounds until ``rounds``, resuming from ``checkpoint`` when it holds this run's state."""
    curve: list[dict] = []
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        fed.load_state_dict(saved["federation"])
        curve = saved["curve"]
        log.info("resuming from round %d of %d (%s)", fed.round, rounds, checkpoint.path)
    bar = tqdm(total=rounds, initial=fed.round, desc=f"{fed.algorithm.name}", unit="round")
    while fed.round < rounds:
        start = time.perf_counter()
        selected = fed.run_round()
        metrics = evaluate(fed.model, *test, device=fed.device)
        curve.append({"round": fed.round, "accuracy": round(metrics["accuracy"], 6),
                      "loss": round(metrics["loss"], 6), "clients": len(selected)})
        if checkpoint:
            checkpoint.save({"federation": fed.state_dict(), "curve": curve})
        bar.update(1)
        bar.set_postfix(acc=f"{metrics['accuracy']:.3f}")
        log.info("round %d/%d: %d clients, test accuracy %.4f, loss %.4f (%.1f s)", fed.round, rounds,
                 len(selected), metrics["accuracy"], metrics["loss"], time.perf_counter() - start)
    bar.close()
    return RunResult(fed, curve)
