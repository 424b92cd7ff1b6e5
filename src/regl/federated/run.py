"""A federated training run as the stage does it: client data in, trained global model and curve out.

``run_training`` is the whole stage: the local engine trains the clients in this process; the Flower engine
(``train.engine: flower``) starts Flower's simulation runtime, whose ServerApp calls ``run_training`` again
with its Grid, so both engines share every step here and differ only in where ``client_updates`` runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from regl.atomic import write_text
from regl.checkpoint import CHECKPOINT_DIR, Checkpoint, fingerprint
from regl.client_data import ClientData, client_files, load_client
from regl.errors import ReglError
from regl.federated.engine import Federation
from regl.federated.params import TrainParams
from regl.federated.registry import build_algorithm, projection_dim
from regl.images import decode_png
from regl.modelio import save_model
from regl.models import build_model
from regl.params import load_experiment, load_section
from regl.seeding import derive_seed
from regl.shards import read_shard
from regl.stage import write_json
from regl.tensors import shard_tensors
from regl.training import SGDConfig, evaluate, resolve_device

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
            return build_model(p.model, channels, num_classes, image_size, projection_dim(p))

    try:
        with torch.no_grad():
            build().eval()(torch.zeros(2, channels, image_size, image_size))
    except (ValueError, RuntimeError) as exc:
        raise ReglError(f"params.yaml: train.model = {p.model!r} does not fit {image_size} px images with "
                        f"{channels} channel(s): {str(exc).splitlines()[0]}") from None
    return build


def sgd_config(p: TrainParams) -> SGDConfig:
    return SGDConfig(p.local_epochs, p.batch_size, p.lr, p.momentum, p.weight_decay)


def make_federation(p: TrainParams, clients: list[ClientData], factory: Callable[[], nn.Module],
                    device: torch.device) -> Federation:
    return Federation(factory, build_algorithm(p), clients, sgd_config(p), p.client_fraction, p.seed, device)


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


@dataclass(frozen=True)
class TrainPaths:
    """The stage's inputs and outputs."""

    params: Path = Path("params.yaml")
    clients_dir: Path = Path("data/clients")
    synthetic_dir: Path = Path("data/synthetic")
    test_file: Path = Path("data/prepared/test.parquet")
    model_out: Path = Path("models/global_model.safetensors")
    metrics: Path = Path("metrics/train.json")
    curve_out: Path = Path("metrics/train_curve.csv")

    def under(self, root: Path) -> TrainPaths:
        """Relative paths resolved against ``root`` (a Flower ServerApp does not start in the repository)."""
        return replace(self, **{f.name: root / getattr(self, f.name) for f in fields(self)})


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


def run_training(paths: TrainPaths, grid: Any = None) -> None:
    """The federated_train stage. ``grid``: a Flower Grid, when called from inside a Flower ServerApp."""
    exp = load_experiment(paths.params)
    p = load_section(paths.params, "train", TrainParams)
    if p.engine == "flower" and grid is None:
        from regl.federated.flower_engine import simulate  # checks that the extra is installed first

        simulate(paths, p, exp.clients)
        return
    device = resolve_device(p.device)
    # A Flower SuperLink host may hold no client shard (each SuperNode reads its own); locally, check them all
    files = [] if grid is not None else client_files(exp.clients, paths.clients_dir, paths.synthetic_dir,
                                                      p.synthetic, "train.synthetic")
    test = read_shard(paths.test_file)
    size, _, channels = decode_png(test.images[0]).shape
    setup = RunSetup(p, exp.clients, channels, len(test.class_names), size)
    factory = model_factory(p, channels, len(test.class_names), size)
    torch.use_deterministic_algorithms(True, warn_only=True)

    if grid is None:
        clients = load_clients(exp.clients, paths.clients_dir, paths.synthetic_dir, p.synthetic, channels)
        fed = make_federation(p, clients, factory, device)
        key = fingerprint({"train": p.model_dump(), "clients": exp.clients}, files + [paths.test_file])
        checkpoint: Checkpoint | None = Checkpoint(CHECKPOINT_DIR / "federated_train.pt", key)
    else:
        from regl.federated.flower_engine import FlowerFederation

        # client state lives on the Flower nodes, out of the server's reach: a Flower run does not resume
        fed = FlowerFederation(grid, setup, factory, build_algorithm(p), device, paths)
        checkpoint = None
    real, synthetic = fed.image_counts()
    log.info("%s on %s (%s engine): %d clients, %d real + %d synthetic images, %d rounds", p.algorithm, device,
             p.engine, len(exp.clients), real, synthetic, p.rounds)
    result = train(fed, p.rounds, shard_tensors(test, channels), checkpoint)
    write_outputs(paths, setup, result, real, synthetic)
    if checkpoint:
        checkpoint.remove()
    log.info("final test accuracy %.4f after %d rounds", result.curve[-1]["accuracy"], p.rounds)


def write_outputs(paths: TrainPaths, setup: RunSetup, result: RunResult, real: int, synthetic: int) -> None:
    p, curve, last = setup.params, result.curve, result.curve[-1]
    arch = {"name": p.model, "channels": setup.channels, "num_classes": setup.num_classes,
            "image_size": setup.image_size, "algorithm": p.algorithm}
    if projection_dim(p):
        arch["projection"] = projection_dim(p)
    save_model(paths.model_out, result.federation.model, arch)
    write_json(paths.metrics, {
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
    })
    rows = ["round,accuracy,loss,clients"] + [f"{r['round']},{r['accuracy']},{r['loss']},{r['clients']}"
                                               for r in curve]
    write_text(paths.curve_out, "\n".join(rows) + "\n")
