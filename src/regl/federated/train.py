"""Stage federated_train's work: the round loop over a federation, and what the stage reports of it.

``train`` is the one training function: the stage calls it with in-process clients, the Flower ServerApp with
Flower's (regl.federated.flower_engine.train_on_flower). It resumes from a checkpoint when one holds this run's
state. ``read_setup`` and ``train_and_write`` are the stage's body around it, shared by both engines.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from regl.core.checkpoint import Checkpoint
from regl.core.stage import write_json
from regl.training.compute import ComputeParams
from regl.core.errors import ReglError
from regl.evaluation.scoring import evaluate
from regl.federated.algorithm import Algorithm
from regl.federated.curve import CurveLog
from regl.federated.engine import ClientRunner, Federation
from regl.federated.registry import projection_dim
from regl.federated.train_params import TrainParams
from regl.data.imageset import CacheBudget, Images, ShardImages, open_images
from regl.training.modelio import save_model
from regl.training.models import build_model
from regl.core.seeding import derive_seed
from regl.training.loop import samples_seen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageFiles:
    """The federated_train stage's inputs and outputs."""

    clients_dir: Path
    synthetic_dir: Path
    test_file: Path
    val_file: Path
    model_out: Path
    metrics: Path
    curve_dir: Path  # the per-round curve, logged with DVCLive (regl.federated.curve)

    @classmethod
    def of(cls, paths: SimpleNamespace, root: Path = Path(".")) -> StageFiles:
        """The stage's files among the pipeline's (``regl.core.stage.pipeline_paths``), under ``root``."""
        prepared = root / paths.data.prepared
        return cls(root / paths.data.clients, root / paths.data.synthetic, prepared / "test.parquet",
                   prepared / "val.parquet", root / paths.models.global_model, root / paths.metrics.train,
                   root / paths.metrics.train_curve)


@dataclass(frozen=True)
class Scored:
    """The splits the global model is scored on after every round: the test split, and the validation split
    (prepare.val_size; None without one) that tuning selects on."""

    test: ShardImages
    val: ShardImages | None


def read_setup(files: StageFiles, p: TrainParams, clients: list[int],
               budget: CacheBudget) -> tuple[RunSetup, Scored]:
    """What every client and the server agree on, read from the test split; and the splits scored each round."""
    test = open_images([files.test_file], budget=budget)
    if not len(test):
        raise ReglError(f"{files.test_file}: holds no images; re-run prepare (dvc repro prepare)")
    val = open_images([files.val_file], budget=budget)
    size, _, channels = test.shape
    return RunSetup(p, clients, channels, len(test.class_names), size), Scored(test, val if len(val) else None)


def train_and_write(files: StageFiles, setup: RunSetup, scored: Scored, algorithm: Algorithm,
                    runner: ClientRunner, device: torch.device, checkpoint: Checkpoint | None,
                    stage_log: logging.Logger) -> None:
    """Train (either engine's ``runner``) and write the global model, metrics/train.json and the curve."""
    p = setup.params
    torch.use_deterministic_algorithms(True, warn_only=True)
    fed = make_federation(setup, algorithm, runner, device)
    real, synthetic = runner.image_counts()
    stage_log.info("%s on %s (%s engine): %d clients, %d real + %d synthetic images, %d rounds", p.algorithm,
                   device, p.engine, len(setup.clients), real, synthetic, p.rounds)
    result = train(fed, p.rounds, scored.test, checkpoint, p, scored.val, files.curve_dir)
    save_model(files.model_out, result.federation.model, model_arch(setup))
    write_json(files.metrics, train_metrics(setup, result.curve, real, synthetic))
    if checkpoint:
        checkpoint.remove()
    stage_log.info("final test accuracy %.4f after %d rounds", result.curve[-1]["accuracy"], p.rounds)


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
                return build_model(p.model, channels, self.num_classes, size, projection_dim(p))

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


# a run is "at chance" while its test accuracy is below this multiple of the best constant guess
CHANCE_MARGIN = 1.5
# converged: the mean accuracy of the last five rounds within this of the mean of the five before
CONVERGED_TOLERANCE = 0.01


def chance_check_round(rounds: int) -> int:
    """The round after which a run still at chance is reported: a fifth of the rounds, at least one."""
    return max(1, math.ceil(rounds / 5))


def chance_level(y: torch.Tensor) -> float:
    """The accuracy of always predicting the commonest class of ``y``."""
    return float(torch.bincount(y).max()) / len(y) if len(y) else 0.0


def chance_warning(round_index: int, rounds: int, accuracy: float, chance: float) -> str | None:
    """The line logged when, after a fifth of the rounds, the global model is still at chance."""
    if round_index != chance_check_round(rounds) or accuracy >= CHANCE_MARGIN * chance:
        return None
    return (f"after round {round_index} of {rounds} the global model is still at chance (test accuracy "
            f"{accuracy:.3f}, chance {chance:.3f}): it is not learning with this recipe on this data; try a "
            f"higher train.lr, more local steps per round (train.local_epochs or train.local_steps) or more "
            f"train.rounds (docs/algorithms.md, 'The default recipe')")


def divergence_error(round_index: int, algorithm: str, loss: float) -> ReglError | None:
    """The error a run stops with once the global model's test loss is NaN or infinite: every round after it
    would report chance accuracy from a broken model, and a table cell made of it would read as a result."""
    if math.isfinite(loss):
        return None
    return ReglError(f"round {round_index}: the global model's test loss is {loss}: {algorithm} diverged with this "
                     f"recipe; lower train.lr (SCAFFOLD, FedNova and MOON need a smaller one than FedAvg under "
                     f"strong skew: docs/experiments.md, 'Baselines benchmark')")


@dataclass
class RunResult:
    federation: Federation
    curve: list[dict]


def train(fed: Federation, rounds: int, test: Images, checkpoint: Checkpoint | None = None,
          compute: ComputeParams = ComputeParams(), val: Images | None = None,
          curve_dir: Path | None = None) -> RunResult:
    """Run rounds until ``rounds``, resuming from ``checkpoint`` when it holds this run's state; the global model
    is scored on ``test``, and on ``val`` when given, after each round (as ``compute`` says), and the scores are
    logged to ``curve_dir`` when given."""
    curve: list[dict] = []
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        fed.load_state_dict(saved["federation"])
        curve = saved["curve"]
        log.info("resuming from round %d of %d (%s)", fed.round, rounds, checkpoint.path)
    curve_log = CurveLog(curve_dir, curve) if curve_dir else None
    bar = tqdm(total=rounds, initial=fed.round, desc=f"{fed.algorithm.name}", unit="round")
    chance = chance_level(test.labels)
    while fed.round < rounds:
        start = time.perf_counter()
        selected = fed.run_round()
        metrics = evaluate(fed.model, test, fed.device, compute)
        error = divergence_error(fed.round, fed.algorithm.name, metrics["loss"])
        if error:
            raise error
        point = {"round": fed.round, "accuracy": round(metrics["accuracy"], 6), "loss": round(metrics["loss"], 6)}
        if val is not None:
            on_val = evaluate(fed.model, val, fed.device, compute)
            point |= {"val_accuracy": round(on_val["accuracy"], 6), "val_loss": round(on_val["loss"], 6)}
        point |= {"clients": len(selected), "work": [list(w) for w in fed.last_work]}
        curve.append(point)
        warning = chance_warning(fed.round, rounds, metrics["accuracy"], chance)
        if warning:
            log.warning(warning)
        if checkpoint:
            checkpoint.save({"federation": fed.state_dict(), "curve": curve})
        if curve_log:
            curve_log.log(point)
        bar.update(1)
        bar.set_postfix(acc=f"{metrics['accuracy']:.3f}")
        log.info("round %d/%d: %d clients, test accuracy %.4f, loss %.4f (%.1f s)", fed.round, rounds,
                 len(selected), metrics["accuracy"], metrics["loss"], time.perf_counter() - start)
    bar.close()
    if curve_log:
        curve_log.close()
    return RunResult(fed, curve)


def train_metrics(setup: RunSetup, curve: list[dict], real: int, synthetic: int) -> dict:
    """metrics/train.json."""
    p, last = setup.params, curve[-1]
    acc = [r["accuracy"] for r in curve]
    work = [(n, k) for r in curve for n, k in r.get("work", [])]
    steps = [k for _, k in work]
    return {
        "algorithm": p.algorithm,
        "synthetic": p.synthetic,
        "rounds": p.rounds,
        "accuracy": last["accuracy"],
        "loss": last["loss"],
        # under strong skew the last round's accuracy swings from round to round; this is steadier
        "accuracy_mean_last_5": mean_last_5(curve, "accuracy"),
        # the validation split's (prepare.val_size; null without one): what tuning selects on, never the test's
        "val_accuracy": last.get("val_accuracy"),
        "val_accuracy_mean_last_5": mean_last_5(curve, "val_accuracy"),
        # convergence: the change over the last five rounds (acc[R] - acc[R-5]) and whether the mean of the last
        # five rounds is within CONVERGED_TOLERANCE of the five before (null when under 10 rounds)
        "accuracy_change_last_5": round(acc[-1] - acc[-6], 6) if len(acc) >= 6 else None,
        "converged": converged(acc),
        # compute: local optimizer steps per client per round (mean), all steps, all images processed
        "local_epochs": None if p.local_steps else p.local_epochs,
        "local_steps": p.local_steps,
        "steps_per_round": round(sum(steps) / len(steps), 2) if steps else None,
        "optimizer_steps": sum(steps),
        "samples_processed": sum(samples_seen(n, p.batch_size, k) for n, k in work),
        "num_clients": len(setup.clients),
        "real_images": real,
        "synthetic_images": synthetic,
        # the curve, round by round, where `dvc exp show --json` exports it with the run (so that `regl report`
        # draws curves from an export); DVC's metric tables show numbers only and leave these lists out
        "by_round": {key: [r[key] for r in curve] for key in ("accuracy", "val_accuracy") if key in last},
    }


def mean_last_5(curve: list[dict], key: str) -> float | None:
    last = [r[key] for r in curve[-5:] if key in r]
    return round(sum(last) / len(last), 6) if last else None


def converged(acc: list[float]) -> bool | None:
    """Whether the last five rounds' mean accuracy is within CONVERGED_TOLERANCE of the five rounds' before."""
    if len(acc) < 10:
        return None
    return abs(sum(acc[-5:]) - sum(acc[-10:-5])) / 5 <= CONVERGED_TOLERANCE


def model_arch(setup: RunSetup) -> dict[str, Any]:
    """What regl.training.modelio records with the global model."""
    p = setup.params
    arch = {"name": p.model, "channels": setup.channels, "num_classes": setup.num_classes,
            "image_size": setup.image_size, "algorithm": p.algorithm}
    if projection_dim(p):  # MOON's network: regl.training.modelio rebuilds its projection head from this
        arch["projection"] = projection_dim(p)
    return arch
