"""Stage federated_train's work: the round loop over a federation, and what the stage reports of it.

``train`` is the one training function: the stage calls it with in-process clients, the Flower ServerApp with
Flower's (the stage builds both; see stages/federated_train.py). It resumes from a checkpoint when one holds
this run's state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from regl.checkpoint import Checkpoint
from regl.errors import ReglError
from regl.evaluation import evaluate
from regl.federated.algorithm import Algorithm
from regl.federated.engine import ClientRunner, Federation
from regl.federated.train_params import TrainParams
from regl.models import build_model
from regl.seeding import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSetup:
    """What the server and every client agree on before round 1."""

    params: TrainParams
    clients: list[int]
    channels: int
    num_classes: int
    image_size: int

    def to_json(self) -> dict[str, Any]:
        return {"train": self.params.model_dump(), "clients": self.clients, "channels": self.channels,
                "num_classes": self.num_classes, "image_size": self.image_size}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSetup:
        return cls(TrainParams.model_validate(d["train"]), list(d["clients"]), d["channels"], d["num_classes"],
                   d["image_size"])

    def model_factory(self) -> Callable[[], nn.Module]:
        """Builds the model with weights seeded by (train.seed, "init"), leaving global RNG state untouched."""
        p, channels, size = self.params, self.channels, self.image_size

        def build() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(p.seed, "init"))
                return build_model(p.model, channels, self.num_classes, size)

        try:
            with torch.no_grad():
                build().eval()(torch.zeros(2, channels, size, size))
        except (ValueError, RuntimeError) as exc:
            raise ReglError(f"params.yaml: train.model = {p.model!r} does not fit {size} px images with "
                            f"{channels} channel(s): {str(exc).splitlines()[0]}") from None
        return build


def make_federation(setup: RunSetup, algorithm: Algorithm, runner: ClientRunner, device: torch.device) -> Federation:
    p = setup.params
    return Federation(setup.model_factory()(), algorithm, runner, setup.clients, p.client_fraction, p.seed, device)


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


def train_metrics(setup: RunSetup, curve: list[dict], real: int, synthetic: int) -> dict:
    """metrics/train.json."""
    p, last = setup.params, curve[-1]
    return {
        "algorithm": p.algorithm,
        "synthetic": p.synthetic,
        "rounds": p.rounds,
        "accuracy": last["accuracy"],
        "loss": last["loss"],
        # under strong skew the last round's accuracy swings from round to round; this is steadier
        "accuracy_mean_last_5": round(sum(r["accuracy"] for r in curve[-5:]) / len(curve[-5:]), 6),
        "num_clients": len(setup.clients),
        "real_images": real,
        "synthetic_images": synthetic,
    }


def curve_csv(curve: list[dict]) -> str:
    """metrics/train_curve.csv: one row per round (a DVC plot)."""
    rows = ["round,accuracy,loss,clients"] + [f"{r['round']},{r['accuracy']},{r['loss']},{r['clients']}"
                                               for r in curve]
    return "\n".join(rows) + "\n"


def model_arch(setup: RunSetup) -> dict[str, Any]:
    """What regl.modelio records with the global model."""
    p = setup.params
    return {"name": p.model, "channels": setup.channels, "num_classes": setup.num_classes,
            "image_size": setup.image_size, "algorithm": p.algorithm}
