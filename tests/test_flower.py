"""train.engine: flower — the same algorithms on Flower's simulation runtime and on a SuperLink with SuperNodes.

Needs the `flower` extra (part of `.[dev]`); skipped where Flower is not installed.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, set_params, stage

from regl.federated.train_params import ALGORITHMS

pytest.importorskip("flwr")
pytest.importorskip("ray")

# threads 1: the local engine (and the simulation's server) at the one thread Ray gives each client actor
TWO_CLIENTS = {"clients": [0, 1], "train.rounds": 2, "prepare.image_size": 16, "train.synthetic": False,
               "train.flower.client_cpus": 1, "threads": 1}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Both engines run torch with one thread (Ray gives each actor's torch one thread per CPU it holds, 1 here):
    at the default recipe's lr a different summation order across thread counts grows past any useful tolerance
    within two rounds (measured 1e-3 at lr 0.05), so the engines are compared at the same thread count."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(scope="module")
def flower_repo(tmp_path_factory, fake_fmnist):
    from conftest import make_pipeline

    repo = make_pipeline(tmp_path_factory.mktemp("flower") / "repo", fake_fmnist, **TWO_CLIENTS)
    stage("prepare", repo)
    stage("partition", repo)
    return repo


def weights(path: Path) -> list[torch.Tensor]:
    from regl.training.modelio import load_model

    model, _ = load_model(path)
    return [t.detach().clone() for t in model.state_dict().values()]


def train(repo: Path, engine: str, algorithm: str, tag: str) -> tuple[list[torch.Tensor], dict]:
    set_params(repo, **{"train.engine": engine, "train.algorithm": algorithm})
    stage("federated_train", repo)
    out = repo / f"out-{tag}"
    out.mkdir(exist_ok=True)
    for f in ("models/global_model.safetensors", "metrics/train.json", "metrics/train_curve/metrics.json"):
        shutil.copy2(repo / f, out / Path(f).name)
    return weights(out / "global_model.safetensors"), json.loads((out / "train.json").read_text())


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Bit-identical where both engines ran torch with the same thread count; the stated tolerance covers a
    different reduction order across threads (Ray actors get one thread per CPU they are given)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5), (x - y).abs().max()


# Every client-side rule (plain SGD, FedProx's term, SCAFFOLD's correction and c_i, FedNova's step count, MOON's
# previous model) and one server optimizer: the server rules run in the Federation whatever the engine, so
# FedYogi, FedAdagrad and FedAvgM (FedAdam's code path on the client) add minutes and no coverage.
FLOWER_ALGORITHMS = ["fedavg", "fedprox", "scaffold", "fednova", "fedadam", "moon"]
assert set(FLOWER_ALGORITHMS) <= set(ALGORITHMS)


@pytest.mark.parametrize("algorithm", FLOWER_ALGORITHMS)
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


class Loopback:
    """A SuperLink and one SuperNode per client on 127.0.0.1 (docs/flower.md's multi-machine commands), each node
    told its client id and shard folder, every process in a session of its own with its log in ``folder``."""

    def __init__(self, folder: Path, repo: Path, clients=(0, 1)):
        self.folder, self.repo, self.bin = folder, repo, Path(sys.executable).parent
        home, link = folder / "flwr-home", free_port()
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                          f'address = "127.0.0.1:{link}"\ninsecure = true\n')
        self.env = {**os.environ, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self._start("superlink", [self.bin / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port",
                                  str(link), "--disable-runtime-dependency-installation", "--database",
                                  str(folder / "state.db")], self.env)
        deadline = time.monotonic() + 120  # a busy machine takes a while to start it
        while True:
            try:
                socket.create_connection(("127.0.0.1", link), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and self.procs["superlink"].poll() is None, self.shown()
                time.sleep(0.2)
        for cid in clients:
            self._start(f"node{cid}", [self.bin / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                                       "--host", "127.0.0.1", "--port", str(free_port()), "--node-config",
                                       f"client-id={cid} clients-dir='{repo / 'data/clients'}'"],
                        {**self.env, "FLWR_HOME": str(folder / f"node{cid}")})

    def _start(self, name: str, cmd: list, env: dict) -> subprocess.Popen:
        self.logs[name] = self.folder / f"{name}.log"
        with open(self.logs[name], "w") as out:
            self.procs[name] = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return self.procs[name]

    def run(self) -> subprocess.Popen:
        """`flwr run` of the regl Flower App with this repository as its workdir (output in run.log)."""
        return self._start("run", [self.bin / "flwr", "run", REPO / "flower", "loopback", "--stream",
                                   "--run-config", f"workdir='{self.repo}'"], self.env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and everything it started (a SuperNode runs its ClientApp in a child process)."""
        if self.procs[name].poll() is None:
            os.killpg(self.procs[name].pid, sig)

    def close(self) -> None:
        for name in self.procs:
            self.kill(name, signal.SIGTERM)
        for p in self.procs.values():
            p.wait(timeout=30)

    def shown(self) -> str:
        return "\n".join(f"--- {n}\n{path.read_text()[-3000:]}" for n, path in self.logs.items())


def test_superlink_and_two_supernodes_on_loopback(flower_repo, tmp_path):
    """docs/flower.md's multi-machine commands on one machine (Loopback), `flwr run` of the regl Flower App;
    the outputs are the stage's."""
    repo = flower_repo
    set_params(repo, **{"train.engine": "local", "train.algorithm": "fedavg"})
    local, local_metrics = train(repo, "local", "fedavg", "local-loopback")
    for f in ("models/global_model.safetensors", "metrics/train.json"):
        (repo / f).unlink()
    net = Loopback(tmp_path, repo)
    try:
        net.run().wait(timeout=300)
    finally:
        net.close()
    assert (repo / "metrics/train.json").exists(), net.shown()
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics.keys() == local_metrics.keys() and metrics["rounds"] == 2
    assert (repo / "metrics/train_curve/plots/metrics/test/accuracy.tsv").read_text().count("\n") == 3
    assert_same(local, weights(repo / "models/global_model.safetensors"))


def test_supernode_killed_mid_round_ends_the_run_naming_the_client(flower_repo, tmp_path):
    """The node of client 1 is killed (with its ClientApp) while it trains round 2. The SuperLink answers for the
    dead node once it misses its heartbeats (two of Flower's 30 s intervals); the run then ends, failed, with one
    error line naming client 1 and round 2, no traceback, and the outputs of the earlier run as they were."""
    repo = flower_repo
    set_params(repo, **{"train.engine": "local", "train.algorithm": "fedavg", "train.rounds": 3})
    stage("federated_train", repo)
    # the curve is a live log (DVCLive): it shows the rounds the failed run made; the outputs are written at the end
    outputs = ["models/global_model.safetensors", "metrics/train.json"]
    before = {f: (repo / f).read_bytes() for f in outputs}
    net = Loopback(tmp_path, repo)
    try:
        run = net.run()
        start = time.monotonic()
        while net.logs["node1"].read_text().count("Receiving: train message") < 2:  # round 2 has reached it
            assert run.poll() is None and time.monotonic() - start < 240, net.shown()
            time.sleep(0.05)
        net.kill("node1")
        killed = time.monotonic()
        run.wait(timeout=240)
        ended = time.monotonic() - killed
    finally:
        net.close()
        set_params(repo, **{"train.rounds": 2})
    text = net.logs["run"].read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, net.shown()
    assert errors[0].startswith("error: Flower: client 1 (node ") and "failed in round 2" in errors[0], errors[0]
    assert "Traceback" not in text, text[-3000:]
    assert ended < 150, f"the run took {ended:.0f} s to end after the node died"
    assert {f: (repo / f).read_bytes() for f in outputs} == before  # nothing half-written, nothing lost
    assert json.loads((repo / "metrics/train_curve/metrics.json").read_text())["step"] == 1  # round 2 never ended


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



# --- ReGL's client side on the nodes (train.flower.generate_on_nodes) ------------------------------------------
def _audited_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_nodes_adapt_and_generate_where_their_data_is_with_the_pipelines_bytes(flower_repo):
    """Each simulated node receives the base generator, fine-tunes its LoRA on its own shard and makes its
    synthetic shard in its own folder: the same bytes as finetune_lora@<id> and generate@<id> (same params, one
    torch thread both), and the same global model as the local engine on the pipeline's shards. The server's
    message log holds only model-shaped arrays and named numbers: no image, no label list, no adapter."""
    repo = flower_repo
    set_params(repo, **{"train.synthetic": True, "train.algorithm": "fedavg", "train.engine": "local"})
    stage("pretrain_generator", repo)
    for cid in (0, 1):
        stage("finetune_lora", repo, "--client", str(cid))
        stage("generate", repo, "--client", str(cid))
    try:
        local, _ = train(repo, "local", "fedavg", "local-regl")
        log_file = repo / "messages.jsonl"
        set_params(repo, **{"train.flower.generate_on_nodes": True, "train.flower.message_log": str(log_file)})
        flower, metrics = train(repo, "flower", "fedavg", "flower-regl")
    finally:
        set_params(repo, **{"train.synthetic": False, "train.flower.generate_on_nodes": False,
                            "train.flower.message_log": None})
    nodes = repo / ".regl/nodes"
    for cid in (0, 1):
        node = nodes / f"client_{cid}"
        lora = f"client_{cid}/pytorch_lora_weights.safetensors"
        assert (node / "lora" / lora).read_bytes() == (repo / "models/lora" / lora).read_bytes()
        for folder in ("synthetic", "vanilla"):
            shard = f"client_{cid}.parquet"
            assert (node / folder / shard).read_bytes() == (repo / "data" / folder / shard).read_bytes(), folder
    assert metrics["synthetic_images"] > 0
    assert_same(local, flower)

    from regl.training.modelio import load_model

    model, _ = load_model(repo / "models/global_model.safetensors")
    shapes = [list(t.shape) for t in model.state_dict().values()]
    messages = _audited_log(log_file)
    assert {m["kind"] for m in messages} == {"query", "train.synthesize", "train"}
    for m in messages:
        assert m["error"] is None and not m["configs"] and set(m["metrics"]) == {"info"}
        assert all(isinstance(v, (int, float)) for v in m["metrics"]["info"].values())
        if m["kind"] == "train":
            assert set(m["arrays"]) == {"weights"} and [s for _, s in m["arrays"]["weights"]] == shapes
        else:
            assert not m["arrays"], m  # the generation's reply: figures only
    assert sum(m["kind"] == "train" for m in messages) == 2 * 2  # two clients, two rounds


def test_a_reply_holding_an_image_or_a_label_list_ends_the_run(flower_repo):
    """The server's check of each reply (regl.federated.flower_engine.audit_reply): a train reply with an extra
    array record of image shape, an image slipped in as a metric list, the adapter's weights after generating, or
    an unknown metric, are each named; the honest reply passes."""
    from flwr.app import ArrayRecord, MessageType, MetricRecord, RecordDict

    from regl.federated.flower_engine import SYNTHESIZE, audit_reply

    shapes = [(4, 1, 3, 3), (4,), (10, 4), (10,)]
    weights = ArrayRecord([np.zeros(s, np.float32) for s in shapes])
    info = {"client": 1, "num-examples": 10, "steps": 3, "num-real": 10}

    def reply(**records) -> RecordDict:
        return RecordDict({"weights": weights, "info": MetricRecord(info), **records})

    assert audit_reply(reply(), MessageType.TRAIN, shapes) is None
    image = ArrayRecord([np.zeros((1, 16, 16), np.float32)])
    assert "array record 'extra.image'" in audit_reply(reply(**{"extra.image": image}), MessageType.TRAIN, shapes)
    assert "'pixels'" in audit_reply(reply(info=MetricRecord({**info, "pixels": [0.5] * 256})),
                                     MessageType.TRAIN, shapes)
    assert "'labels'" in audit_reply(RecordDict({"info": MetricRecord({"client": 1, "labels": [3, 3, 7]})}),
                                     MessageType.QUERY, shapes)
    lora = ArrayRecord([np.zeros((8, 32), np.float32)])
    assert "array record 'lora'" in audit_reply(RecordDict({"info": MetricRecord({"client": 1}), "lora": lora}),
                                                SYNTHESIZE, shapes)
    swapped = RecordDict({"weights": ArrayRecord([np.zeros(s, np.float32) for s in reversed(shapes)]),
                          "info": MetricRecord(info)})
    assert "not shaped like the model's" in audit_reply(swapped, MessageType.TRAIN, shapes)


def test_nodes_that_do_not_reply_in_time_end_the_run_naming_them(flower_repo):
    """train.flower.reply_timeout_s: nodes that do not answer in time (here: a limit no node can meet, standing in
    for a node that hangs while still heartbeating) end the run with one line naming each, nothing written."""
    repo = flower_repo
    (repo / "metrics/train.json").unlink(missing_ok=True)
    set_params(repo, **{"train.engine": "flower", "train.flower.reply_timeout_s": 0.001})
    try:
        proc = stage("federated_train", repo, check=False)
    finally:
        set_params(repo, **{"train.engine": "local", "train.flower.reply_timeout_s": None})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    # before round 1 the server does not know yet which client a silent node serves: it names the node
    assert errors[0].startswith("error: Flower: node ") and errors[0].count("node ") == 2, errors[0]
    assert "did not reply before round 1 within train.flower.reply_timeout_s = 0.001 s" in errors[0], errors[0]
    assert not (repo / "metrics/train.json").exists()
