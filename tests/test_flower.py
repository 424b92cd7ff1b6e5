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
from typing import Callable

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
    from conftest import make_split

    return make_split(tmp_path_factory.mktemp("flower") / "repo", fake_fmnist, **TWO_CLIENTS)


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


# The ClientApp runs the in-process runner's own local_update, so what an engine can get wrong is what travels:
# the weights (FedAvg), the broadcast and the client state kept in Context.state (SCAFFOLD's c and c_i, MOON's
# previous model), and an algorithm's extras (SCAFFOLD's tensors, FedNova's numbers). FedProx's term and the server
# optimizers (FedAdam, FedYogi, FedAdagrad, FedAvgM) move nothing else and run the same code in either engine.
# FedAvg's weights travel in every one of these, and test_simulated_nodes_adapt_and_generate_with_the_pipelines_bytes
# compares FedAvg itself on the two engines. FedNova's runs train half the clients a round (train.client_fraction):
# both engines must pick the same client each round (the weights say which).
FLOWER_CASES = [("scaffold", 1.0), ("moon", 1.0), ("fednova", 0.5)]
assert {a for a, _ in FLOWER_CASES} <= set(ALGORITHMS)


@pytest.fixture(scope="module")
def fedavg_reference(flower_repo) -> list[torch.Tensor]:
    return train(flower_repo, "local", "fedavg", "local-fedavg-ref")[0]


@pytest.mark.parametrize("algorithm, fraction", FLOWER_CASES)
def test_flower_simulation_equals_local_engine(flower_repo, fedavg_reference, algorithm, fraction):
    set_params(flower_repo, **{"train.client_fraction": fraction})
    try:
        local, local_metrics = train(flower_repo, "local", algorithm, f"local-{algorithm}")
        flower, flower_metrics = train(flower_repo, "flower", algorithm, f"flower-{algorithm}")
    finally:
        set_params(flower_repo, **{"train.client_fraction": 1.0})
    assert_same(local, flower)
    assert flower_metrics.keys() == local_metrics.keys()
    assert flower_metrics["real_images"] == local_metrics["real_images"] > 0
    assert abs(flower_metrics["accuracy"] - local_metrics["accuracy"]) <= 0.01
    if algorithm in ("scaffold", "moon"):  # round 2 used the clients' c_i / previous model, kept in Context.state
        fedavg = fedavg_reference
        assert len(fedavg) != len(flower) or any(not torch.equal(x, y) for x, y in zip(fedavg, flower))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """A SuperLink and one SuperNode per client on 127.0.0.1 (docs/flower.md's multi-machine commands), every
    process in a session of its own with its log in ``folder``. ``secure``: the documented deployment — TLS with
    a certificate authority made for the test (flower/make_credentials.py) and SuperNode authentication, each
    node's public key registered with `flwr supernode register`. ``node_config(cid)``: each node's config (default:
    its client id and the repository's shard folder)."""

    def __init__(self, folder: Path, repo: Path, clients=(0, 1), secure: bool = False,
                 node_config: Callable[[int], str] | None = None):
        self.folder, self.repo, self.bin, self.secure = folder, repo, Path(sys.executable).parent, secure
        home, self.link = folder / "flwr-home", free_port()
        home.mkdir()
        self.creds = folder / "credentials"
        if secure:
            subprocess.run([sys.executable, REPO / "flower/make_credentials.py", self.creds, "--superlink-host",
                            "127.0.0.1", "--nodes", *[f"node{c}" for c in clients], "stranger"], check=True)
        where = f'root-certificates = "{self.creds / "ca.crt"}"' if secure else "insecure = true"
        (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                          f'address = "127.0.0.1:{self.link}"\n{where}\n')
        self.env = {**os.environ, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        tls = ["--ssl-ca-certfile", self.creds / "ca.crt", "--ssl-certfile", self.creds / "superlink.crt",
               "--ssl-keyfile", self.creds / "superlink.key", "--enable-supernode-auth"] if secure else ["--insecure"]
        self._start("superlink", [self.bin / "flower-superlink", *tls, "--host", "127.0.0.1", "--port",
                                  str(self.link), "--disable-runtime-dependency-installation", "--database",
                                  str(folder / "state.db")], self.env)
        deadline = time.monotonic() + 120  # a busy machine takes a while to start it
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.link), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and self.procs["superlink"].poll() is None, self.shown()
                time.sleep(0.2)
        node_config = node_config or (lambda cid: f"client-id={cid} clients-dir='{repo / 'data/clients'}'")
        for cid in clients:
            if secure:
                subprocess.run([self.bin / "flwr", "supernode", "register", self.creds / f"node{cid}.pub",
                                "loopback"], env=self.env, check=True, capture_output=True)
            self.start_node(f"node{cid}", node_config(cid))

    def start_node(self, name: str, config: str, key: str | None = None) -> subprocess.Popen:
        """A SuperNode; with ``secure`` it proves its identity with the private key ``key`` (default: its own)."""
        auth = (["--root-certificates", self.creds / "ca.crt", "--auth-supernode-private-key",
                 self.creds / f"{key or name}.key"] if self.secure else ["--insecure"])
        return self._start(name, [self.bin / "flower-supernode", *auth, "--superlink", f"127.0.0.1:{self.link}",
                                  "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config],
                           {**self.env, "FLWR_HOME": str(self.folder / name)})

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
# chunks of 10 images: a node's 20 synthetic images are made in two resumable chunks
THREE_CLIENTS = {**TWO_CLIENTS, "clients": [0, 1, 2], "train.synthetic": True, "generate.chunk_size": 10}


@pytest.fixture(scope="module")
def regl_repo(tmp_path_factory, fake_fmnist):
    """Three clients and ReGL made by the central pipeline: the base generator, each client's LoRA and synthetic
    shard (the stages at one torch thread, as the nodes run), and the local engine's model on them
    (``out-local/``)."""
    from conftest import make_pipeline

    repo = make_pipeline(tmp_path_factory.mktemp("regl-nodes") / "repo", fake_fmnist, **THREE_CLIENTS)
    for name in ("prepare", "partition", "pretrain_generator"):
        stage(name, repo)
    stage("finetune_lora", repo)  # every client, one after another in one process
    stage("generate", repo)
    train(repo, "local", "fedavg", "local")
    return repo


def assert_node_made_the_pipelines_bytes(repo: Path, node: Path, cid: int) -> None:
    lora = f"client_{cid}/pytorch_lora_weights.safetensors"
    assert (node / "lora" / lora).read_bytes() == (repo / "models/lora" / lora).read_bytes(), lora
    for folder in ("synthetic", "vanilla"):
        shard = f"client_{cid}.parquet"
        assert (node / folder / shard).read_bytes() == (repo / "data" / folder / shard).read_bytes(), folder


def assert_only_model_updates_and_figures(log_file: Path, repo: Path, rounds: int) -> None:
    """The server's message log, read independently of the server's own check: train replies hold the model's
    tensors (in the model's shapes and order) and nothing else; every other reply holds single numbers only."""
    from regl.training.modelio import load_model

    model, _ = load_model(repo / "models/global_model.safetensors")
    shapes = [list(t.shape) for t in model.state_dict().values()]
    messages = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {m["kind"] for m in messages} == {"query", "train.synthesize", "train"}
    for m in messages:
        assert m["error"] is None and not m["configs"] and set(m["metrics"]) == {"info"}, m
        assert all(isinstance(v, (int, float)) for v in m["metrics"]["info"].values()), m
        if m["kind"] == "train":
            assert set(m["arrays"]) == {"weights"} and [s for _, s in m["arrays"]["weights"]] == shapes
        else:
            assert not m["arrays"], m
    assert sum(m["kind"] == "train" for m in messages) == len(THREE_CLIENTS["clients"]) * rounds


def test_simulated_nodes_adapt_and_generate_with_the_pipelines_bytes(regl_repo):
    """Flower's simulation runtime with train.flower.generate_on_nodes: each node receives the base generator,
    fine-tunes its LoRA on its own shard and makes its synthetic shard in its own folder — the bytes
    finetune_lora and generate wrote — and training on them gives the local engine's model. The server's
    message log holds only model-shaped arrays and named numbers: no image, no label list, no adapter."""
    repo = regl_repo
    log_file = repo / "messages-simulation.jsonl"
    set_params(repo, **{"train.flower.generate_on_nodes": True, "train.flower.message_log": str(log_file)})
    try:
        flower, metrics = train(repo, "flower", "fedavg", "flower-nodes")
    finally:
        set_params(repo, **{"train.flower.generate_on_nodes": False, "train.flower.message_log": None})
    for cid in THREE_CLIENTS["clients"]:
        assert_node_made_the_pipelines_bytes(repo, repo / f".regl/nodes/client_{cid}", cid)
    assert metrics["synthetic_images"] == json.loads((repo / "out-local/train.json").read_text())["synthetic_images"]
    assert_same(weights(repo / "out-local/global_model.safetensors"), flower)
    assert_only_model_updates_and_figures(log_file, repo, rounds=2)


def kill_while_generating(repo: Path, cid: int, site: Path, cwd: Path) -> int:
    """Leave in ``site``/regl what a node serving ``cid`` leaves when killed after its first synthetic chunk, with
    the params and generator the server sends, the nodes' one thread and working directory (the fingerprint of
    the code a node runs depends on whether a dvc.yaml is there); returns how many chunks are left."""
    from regl.core.params import read_params
    from regl.federated.node_side import NodeFolder, NodeWork, folder_arrays, prepare_client, write_folder

    work = NodeWork.of(read_params(repo / "params.yaml"), repo / "models/generator")
    folder = NodeFolder(site / "regl")
    write_folder(folder_arrays(work.generator), folder.generator)

    def kill(kind: str, index: int) -> None:
        if kind == "synthetic":
            raise KeyboardInterrupt

    threads, here = torch.get_num_threads(), Path.cwd()
    torch.set_num_threads(1)
    os.chdir(cwd)
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_client(cid, site / f"clients/client_{cid}.parquet", folder, work.finetune, work.generate, kill)
    finally:
        torch.set_num_threads(threads)
        os.chdir(here)
    assert not folder.synthetic(cid).exists() and (folder.lora(cid) / "pytorch_lora_weights.safetensors").exists()
    g = work.generate
    return -(-g.images_per_class * 10 // g.chunk) - 1  # the synthetic chunks of 10 classes, after the first


def test_secure_federation_of_three_supernodes_runs_regl_where_the_data_is(regl_repo, tmp_path):
    """docs/flower.md's deployment on loopback: a SuperLink with TLS and SuperNode authentication, three
    registered SuperNodes each holding only its own client's shard and folder, `flwr run` with ReGL's client side
    on the nodes. Every LoRA and synthetic shard is made on its node with the central pipeline's bytes, the global
    model is the local engine's, and the server received no image. A fourth SuperNode whose key was never
    registered is refused. The first node starts from what a node killed while generating leaves on its disk (the
    base generator, its adapter, some chunks of its shard): it makes only the missing chunks and ends with the
    same bytes."""
    repo = regl_repo
    clients = THREE_CLIENTS["clients"]
    for cid in clients:  # each node's disk: its own shard only
        (tmp_path / f"site{cid}/clients").mkdir(parents=True)
        shutil.copy2(repo / f"data/clients/client_{cid}.parquet", tmp_path / f"site{cid}/clients")
    (tmp_path / "net").mkdir()
    killed = clients[0]
    chunks_left = kill_while_generating(repo, killed, tmp_path / f"site{killed}", tmp_path / "net")
    log_file = tmp_path / "messages.jsonl"
    set_params(repo, **{"train.flower.generate_on_nodes": True, "train.flower.message_log": str(log_file)})
    for f in ("models/global_model.safetensors", "metrics/train.json"):
        (repo / f).unlink()
    net = Loopback(tmp_path / "net", repo, clients, secure=True, node_config=lambda cid: (
        f"client-id={cid} clients-dir='{tmp_path / f'site{cid}/clients'}' node-dir='{tmp_path / f'site{cid}/regl'}'"))
    try:
        stranger = net.start_node("stranger", f"client-id=9 clients-dir='{tmp_path}'")
        run = net.run()
        run.wait(timeout=420)
        stranger.wait(timeout=60)
    finally:
        net.close()
        set_params(repo, **{"train.flower.generate_on_nodes": False, "train.flower.message_log": None})
    assert run.returncode == 0 and (repo / "metrics/train.json").exists(), net.shown()
    for cid in clients:
        assert_node_made_the_pipelines_bytes(repo, tmp_path / f"site{cid}/regl", cid)
    assert_same(weights(repo / "out-local/global_model.safetensors"), weights(repo / "models/global_model.safetensors"))
    assert_only_model_updates_and_figures(log_file, repo, rounds=2)
    made = {m["metrics"]["info"]["client"]: m["metrics"]["info"] for m in map(json.loads, log_file.read_text().splitlines())
            if m["kind"] == "train.synthesize"}
    assert made[killed]["reused-lora"] == 1 and made[killed]["chunks-made"] == chunks_left, made[killed]
    assert stranger.returncode != 0 and "Failed to activate SuperNode" in net.logs["stranger"].read_text()


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
