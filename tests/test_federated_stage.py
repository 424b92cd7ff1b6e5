"""The federated_train stage as a user runs it: outputs, bad input, SIGKILL and resume, what DVC reruns."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import dvc, set_params, stage, stage_here

# real images only: these tests run the stages directly, without the generator
TINY = {"train.rounds": 3, "prepare.image_size": 16, "train.synthetic": False}


@pytest.fixture
def trained_inputs(pipeline):
    set_params(pipeline, **TINY)
    stage("prepare", pipeline)
    stage("partition", pipeline)
    return pipeline


CURVE = "metrics/train_curve/plots/metrics"


def curve(repo, name: str) -> list[tuple[int, float]]:
    """(round, value) of one DVCLive series of the per-round curve, e.g. ``test/accuracy``."""
    lines = (repo / CURVE / f"{name}.tsv").read_text().splitlines()
    assert lines[0] == f"step\t{name.split('/')[-1]}"
    return [(int(r), float(v)) for r, v in (line.split("\t") for line in lines[1:])]


def test_stage_writes_model_metrics_and_curve(trained_inputs):
    repo = trained_inputs
    stage("federated_train", repo)
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics["algorithm"] == "fedavg" and metrics["rounds"] == 3 and 0 <= metrics["accuracy"] <= 1
    assert metrics["real_images"] == 900 and metrics["synthetic_images"] == 0
    accuracy = curve(repo, "test/accuracy")
    assert [r for r, _ in accuracy] == [1, 2, 3] and accuracy[-1][1] == metrics["accuracy"]
    assert metrics["val_accuracy"] is None and not (repo / CURVE / "val").exists()  # prepare.val_size = 0
    from regl.training.modelio import load_model

    model, meta = load_model(repo / "models/global_model.safetensors")
    assert meta["algorithm"] == "fedavg" and model(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    assert not (repo / ".regl/checkpoints/federated_train.pt").exists()  # a finished run leaves none


def test_the_validation_curve_scores_the_global_model_on_the_validation_split(trained_inputs):
    repo = trained_inputs
    set_params(repo, **{"prepare.val_size": 100})
    stage("prepare", repo)
    stage("partition", repo)
    stage("federated_train", repo)
    metrics = json.loads((repo / "metrics/train.json").read_text())
    from regl.data.imageset import open_images
    from regl.evaluation.scoring import evaluate
    from regl.training.modelio import load_model

    model, _ = load_model(repo / "models/global_model.safetensors")
    on = {split: evaluate(model.eval(), open_images([repo / f"data/prepared/{split}.parquet"]))
          for split in ("val", "test")}
    assert metrics["val_accuracy"] == round(on["val"]["accuracy"], 6)
    assert metrics["accuracy"] == round(on["test"]["accuracy"], 6)
    assert curve(repo, "val/loss")[-1][1] == round(on["val"]["loss"], 6) != round(on["test"]["loss"], 6)
    val = curve(repo, "val/accuracy")
    assert [r for r, _ in val] == [1, 2, 3] and val[-1][1] == metrics["val_accuracy"]
    assert metrics["by_round"] == {"accuracy": [v for _, v in curve(repo, "test/accuracy")],
                                   "val_accuracy": [v for _, v in val]}
    assert metrics["val_accuracy_mean_last_5"] == round(sum(v for _, v in val) / 3, 6)
    assert metrics["real_images"] == 800  # the pool gave up 100 images: no cap (max_train null) left room


BAD = [
    ({"train.algorithm": "fedsgd"}, "train.algorithm = 'fedsgd': must be one of"),
    ({"train.client_fraction": 0}, "train.client_fraction = 0: must be > 0 and <= 1"),
    ({"train.client_fraction": 1.5}, "train.client_fraction = 1.5: must be > 0 and <= 1"),
    ({"train.rounds": 0}, "train.rounds = 0: must be >= 1"),
    ({"train.synthetic": True}, "train.synthetic = true but data/synthetic/client_0.parquet is missing"),
    ({"train.model": "resnet18"}, "train.model = 'resnet18' does not fit 16 px images"),
]


@pytest.fixture(scope="module")
def split_once(tmp_path_factory, fake_fmnist):
    """prepare and partition run once for the bad-input tests: a refused run writes nothing."""
    from conftest import make_split

    return make_split(tmp_path_factory.mktemp("refused") / "repo", fake_fmnist, **TINY)


@pytest.mark.parametrize("changes,message", BAD)
def test_bad_input_one_line_nothing_written(split_once, changes, message):
    repo = split_once
    params = (repo / "params.yaml").read_text()
    set_params(repo, **changes)
    try:
        proc = stage_here("federated_train", repo)
    finally:
        (repo / "params.yaml").write_text(params)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo / "metrics/train.json").exists()
    assert not (repo / "models").exists() or not any((repo / "models").iterdir())


def test_algorithm_change_reruns_only_training(reproduced):
    repo = reproduced
    original = (repo / "params.yaml").read_text()
    try:
        check_reruns(repo)
    finally:
        (repo / "params.yaml").write_text(original)


def check_reruns(repo):
    assert "up to date" in dvc("repro", cwd=repo).stdout
    set_params(repo, **{"train.algorithm": "fedprox"})
    assert set(json.loads(dvc("status", "--json", cwd=repo).stdout)) == {"federated_train"}
    set_params(repo, **{"train.algorithm": "fedavg", "train.local_epochs": 2})
    assert set(json.loads(dvc("status", "--json", cwd=repo).stdout)) == {"federated_train"}
    set_params(repo, beta=0.5)
    changed = set(json.loads(dvc("status", "--json", cwd=repo).stdout))
    assert {"partition", "federated_train"} <= changed
    assert not changed & {"prepare", "pretrain_generator", "reference_classifier"}
    set_params(repo, beta=0.01, **{"train.local_epochs": 1, "generate.prompt": "a picture of {class}"})
    changed = set(json.loads(dvc("status", "--json", cwd=repo).stdout))
    assert "generate" in changed
    assert not changed & {"finetune_lora", "pretrain_generator", "partition", "prepare"}


def kill_mid_run(repo) -> int:
    """Start the stage, SIGKILL it once it has saved a checkpoint; the number of rounds the checkpoint holds."""
    ckpt = repo / ".regl/checkpoints/federated_train.pt"
    ckpt.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "stages/federated_train.py"], cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=False)["state"]["federation"]["round"]
    assert 1 <= done < 6, "the run was not caught mid-way"
    return done


def test_a_killed_run_resumes_bit_identical_unless_the_code_changed(trained_inputs, monkeypatch):
    """SIGKILLed mid-run, the stage resumes from its checkpoint and ends with the bytes of an uninterrupted run,
    model and curve. The checkpoint is keyed by the code as well: here the stage runs the scratch repository's own
    copy of the library, and a change to an algorithm module between a kill and the rerun discards the saved
    rounds, saying why."""
    repo = trained_inputs
    monkeypatch.setenv("PYTHONPATH", str(repo / "src"))  # run (and change) the code of the scratch copy
    set_params(repo, **{"train.rounds": 6, "train.algorithm": "scaffold", "train.client_fraction": 0.5})
    stage("federated_train", repo)
    uninterrupted = (repo / "models/global_model.safetensors").read_bytes()
    logged = {f: f.read_bytes() for f in (repo / "metrics/train_curve").rglob("*") if f.is_file()}
    (repo / "models/global_model.safetensors").unlink()

    kill_mid_run(repo)
    module = repo / "src/regl/federated/scaffold.py"
    module.write_text(module.read_text() + "\n# a change to the algorithm's module\n")
    rerun = stage("federated_train", repo)
    assert "other code (changed since: src/regl/federated/scaffold.py)" in rerun.stderr, rerun.stderr
    assert "starting from round 0" in rerun.stderr and "resuming" not in rerun.stderr
    assert "round 1/6" in rerun.stderr  # trained from the start
    assert (repo / "models/global_model.safetensors").read_bytes() == uninterrupted  # the change was a comment

    done = kill_mid_run(repo)  # the same code as the killed run: resumed, and still bit-identical
    resumed = stage("federated_train", repo)
    assert f"resuming from round {done} of 6" in resumed.stderr and "ignoring" not in resumed.stderr
    assert (repo / "models/global_model.safetensors").read_bytes() == uninterrupted
    assert {f: f.read_bytes() for f in (repo / "metrics/train_curve").rglob("*") if f.is_file()} == logged
