"""train.engine: flower — the same algorithms on Flower's simulation runtime and on a SuperLink with SuperNodes.

Needs the `flower` extra (part of `.[dev]`); skipped where Flower is not installed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, set_params, stage

from regl.federated.train_params import ALGORITHMS

pytest.importorskip("flwr")
pytest.importorskip("ray")

TWO_CLIENTS = {"clients": [0, 1], "train.rounds": 2, "prepare.image_size": 16, "train.synthetic": False,
               "train.flower.client_cpus": 1}


@pytest.fixture(scope="module")
def flower_repo(tmp_path_factory, fake_fmnist):
    from conftest import make_pipeline

    repo = make_pipeline(tmp_path_factory.mktemp("flower") / "repo", fake_fmnist, **TWO_CLIENTS)
    stage("prepare", repo)
    stage("partition", repo)
    return repo


def weights(path: Path) -> list[torch.Tensor]:
    from regl.modelio import load_model

    model, _ = load_model(path)
    return [t.detach().clone() for t in model.state_dict().values()]


def train(repo: Path, engine: str, algorithm: str, tag: str) -> tuple[list[torch.Tensor], dict]:
    set_params(repo, **{"train.engine": engine, "train.algorithm": algorithm})
    stage("federated_train", repo)
    out = repo / f"out-{tag}"
    out.mkdir(exist_ok=True)
    for f in ("models/global_model.safetensors", "metrics/train.json", "metrics/train_curve.csv"):
        shutil.copy2(repo / f, out / Path(f).name)
    return weights(out / "global_model.safetensors"), json.loads((out / "train.json").read_text())


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Bit-identical where both engines ran torch with the same thread count; the stated tolerance covers a
    different reduction order across threads (Ray actors get one thread per CPU they are given)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5), (x - y).abs().max()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_flower_simulation_equals_local_engine(flower_repo, algorithm):
    local, local_metrics = train(flower_repo, "local", algorithm, f"local-{algorithm}")
    flower, flower_metrics = train(flower_repo, "flower", algorithm, f"flower-{algorithm}")
    assert_same(local, flower)
    assert flower_metrics.keys() == local_metrics.keys()
    assert flower_metrics["real_images"] == local_metrics["real_images"] > 0
    assert abs(flower_metrics["accuracy"] - local_metrics["accuracy"]) <= 0.01
    if algorithm in ("scaffold", "moon"):  # round 2 used the clients' c_i / previous model, kept in Context.state
        fedavg, _ = train(flower_repo, "local", "fedavg", "local-fedavg-ref")
        assert len(fedavg) != len(flower) or any(not torch.equal(x, y) for x, y in zip(fedavg, flower))


def test_flower_selection_matches_local(flower_repo):
    """Half the clients per round: both engines pick the same client each round (the curve records how many,
    the weights which)."""
    set_params(flower_repo, **{"train.client_fraction": 0.5})
    try:
        local, _ = train(flower_repo, "local", "fedavg", "local-half")
        flower, _ = train(flower_repo, "flower", "fedavg", "flower-half")
    finally:
        set_params(flower_repo, **{"train.client_fraction": 1.0})
    assert_same(local, flower)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_superlink_and_two_supernodes_on_loopback(flower_repo, tmp_path):
    """docs/flower.md's multi-machine commands on one machine: a SuperLink, one SuperNode per client (each told its
    client id and shard folder), `flwr run` of the regl Flower App; the outputs are the stage's."""
    repo = flower_repo
    set_params(repo, **{"train.engine": "local", "train.algorithm": "fedavg"})
    local, local_metrics = train(repo, "local", "fedavg", "local-loopback")
    for f in ("models/global_model.safetensors", "metrics/train.json"):
        (repo / f).unlink()

    bin_dir = Path(sys.executable).parent
    home = tmp_path / "flwr-home"
    link = free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("superlink", "node0", "node1")}
    procs = [subprocess.Popen(
        [bin_dir / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
         "--disable-runtime-dependency-installation", "--database", str(tmp_path / "state.db")],
        cwd=tmp_path, env=env, stdout=logs["superlink"], stderr=subprocess.STDOUT)]
    try:
        time.sleep(3)
        for cid in (0, 1):
            procs.append(subprocess.Popen(
                [bin_dir / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                 "--host", "127.0.0.1", "--port", str(free_port()),
                 "--node-config", f"client-id={cid} clients-dir='{repo / 'data/clients'}'"],
                cwd=tmp_path, env={**env, "FLWR_HOME": str(tmp_path / f"node{cid}")},
                stdout=logs[f"node{cid}"], stderr=subprocess.STDOUT))
        proc = subprocess.run([bin_dir / "flwr", "run", REPO / "flower", "loopback", "--stream",
                               "--run-config", f"workdir='{repo}'"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        for f in logs.values():
            f.close()
    shown = "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-3000:]}" for n in logs)
    assert (repo / "metrics/train.json").exists(), f"flwr run: {proc.stdout[-3000:]}{proc.stderr[-3000:]}\n{shown}"
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics.keys() == local_metrics.keys() and metrics["rounds"] == 2
    assert (repo / "metrics/train_curve.csv").read_text().count("\n") == 3
    assert_same(local, weights(repo / "models/global_model.safetensors"))


def test_missing_extra_is_one_line_with_the_install_command(flower_repo, tmp_path):
    """Where Flower is not installed: a package named flwr that fails to import stands in for its absence."""
    fake = tmp_path / "site"
    (fake / "flwr").mkdir(parents=True)
    (fake / "flwr" / "__init__.py").write_text("raise ImportError(\"No module named 'flwr'\")\n")
    set_params(flower_repo, **{"train.engine": "flower"})
    (flower_repo / "metrics/train.json").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "stages/federated_train.py"], cwd=flower_repo, env=env,
                          capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "pip install 'regl[flower]'" in errors[0]
    assert not (flower_repo / "metrics/train.json").exists()
