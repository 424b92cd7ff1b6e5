"""`train.engine: flower`: the same Federation round, with the client updates running in Flower ClientApps.

Nothing about an algorithm is written twice. The ServerApp runs the stage's training (selection keyed by
(seed, round), the algorithm's ``broadcast`` and ``aggregate``, evaluation, outputs) with ``FlowerClients`` as
the federation's client runner: it sends the global weights and the broadcast to the selected clients' nodes
and turns the replies back into ``ClientResult``s. The ClientApp runs ``engine.local_update``, the in-process
runner's function, and keeps the algorithm's per-client state (SCAFFOLD's c_i, MOON's previous model) in
the node's ``Context.state``, where Flower keeps client state between rounds.

A node serves the client named by its node config ``client-id`` (a SuperNode started with
``--node-config "client-id=3"``) or, in the simulation runtime, ``clients[partition-id]``. Its shards come
from node config ``clients-dir`` / ``synthetic-dir`` when set, else from the server's paths.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from regl.data.client_data import ClientData, load_client
from regl.core.device import resolve_device
from regl.core.errors import ReglError
from regl.federated.algorithm import ClientResult
from regl.federated.engine import local_update
from regl.federated.registry import build_algorithm
from regl.core.params import DEFAULT_PARAMS, read_params
from regl.core.stage import pipeline_paths
from regl.federated.train import RunSetup, StageFiles, read_setup, train_and_write
from regl.federated.train_params import FlowerParams, TrainParams
from regl.federated.weights import Weights
from regl.data.imageset import CacheBudget

INSTALL = "pip install 'regl[flower]'"
try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError:
    raise ReglError(f"params.yaml: train.engine = flower needs Flower, an optional extra: {INSTALL}") from None


log = logging.getLogger(__name__)


# --- tensors <-> Flower records ------------------------------------------------------------------------------
def to_record(tensors: Weights) -> ArrayRecord:
    return ArrayRecord([t.detach().cpu().numpy() for t in tensors])


def from_record(record: ArrayRecord, device: torch.device | str = "cpu") -> Weights:
    return [torch.from_numpy(np.array(a, copy=True)).to(device) for a in record.to_numpy_ndarrays()]


def _pack(content: RecordDict, prefix: str, values: dict[str, Any]) -> list[str]:
    """Tensor-list entries of ``values`` as ArrayRecords under ``prefix.<key>``; returns the keys that are None."""
    none = []
    for key, value in values.items():
        if key.startswith("_"):
            continue  # an algorithm's scratch space for one local update
        if value is None:
            none.append(key)
        elif isinstance(value, list) and all(isinstance(v, torch.Tensor) for v in value):
            content[f"{prefix}.{key}"] = to_record(value)
        else:
            raise TypeError(f"{prefix}.{key}: cannot send {type(value).__name__} through Flower")
    return none


def _unpack(content: RecordDict, prefix: str, device: torch.device | str) -> dict[str, Any]:
    return {key.removeprefix(prefix + "."): from_record(rec, device)
            for key, rec in content.array_records.items() if key.startswith(prefix + ".")}


# --- server side -------------------------------------------------------------------------------------------
class FlowerClients:
    """The client runner of a ServerApp: the clients are Flower nodes, reached through ``grid``. Nodes that hold
    no shard paths of their own read the server's ``clients_dir`` / ``synthetic_dir``."""

    def __init__(self, grid: Grid, setup: RunSetup, device: torch.device, clients_dir: Path, synthetic_dir: Path,
                 wait_s: float = 300.0):
        self.grid, self.device, self.round = grid, device, 0
        self.client_ids = sorted(setup.clients)
        self.config = ConfigRecord({"setup": json.dumps(setup.to_json()), "clients-dir": str(clients_dir),
                                    "synthetic-dir": str(synthetic_dir)})
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.nodes, self.counts = self._discover(wait_s)

    def _discover(self, wait_s: float) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
        """Ask every node which client it serves and how many images it holds."""
        deadline = time.monotonic() + wait_s
        while len(node_ids := sorted(self.grid.get_node_ids())) < len(self.client_ids):
            if time.monotonic() > deadline:
                raise ReglError(f"Flower: {len(node_ids)} node(s) connected after {wait_s:.0f} s; "
                                f"{len(self.client_ids)} clients need one each")
            time.sleep(0.5)
        replies = self._exchange([self._message(n, MessageType.QUERY, RecordDict()) for n in node_ids])
        nodes, counts = {}, {}
        for reply in replies:
            info = reply.content.metric_records["info"]
            cid = int(info["client"])
            if cid in nodes:
                raise ReglError(f"Flower: nodes {nodes[cid]} and {reply.metadata.src_node_id} both serve client {cid}")
            nodes[cid], counts[cid] = reply.metadata.src_node_id, (int(info["real"]), int(info["synthetic"]))
        missing = sorted(set(self.client_ids) - set(nodes))
        if missing:
            raise ReglError(f"Flower: no node serves client(s) {missing} of params.yaml clients "
                            f"(nodes serve {sorted(nodes)}; start SuperNodes with --node-config 'client-id=<id>')")
        return nodes, counts

    def _message(self, node: int, kind: str, content: RecordDict) -> Message:
        content["config"] = self.config
        return Message(content, dst_node_id=node, message_type=kind, group_id=str(self.round))

    def _who(self, node: int) -> str:
        client = next((c for c, n in self.nodes.items() if n == node), None)
        return f"node {node}" if client is None else f"client {client} (node {node})"

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """Send and wait for every reply. A node that fails, or drops out (its SuperNode stopped: the SuperLink
        answers for it once it misses its heartbeats, about a minute), ends the run with one line naming its
        client; the stage has written nothing yet, so the outputs of an earlier run stay as they were."""
        replies = list(self.grid.send_and_receive(messages))
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        training = messages[0].metadata.message_type == MessageType.TRAIN
        when = f"in round {self.round + 1}" if training else "before round 1"
        advice = "nothing was written; restart its SuperNode and run federated_train again"
        for reply in replies:
            if reply.has_error():
                node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                reason = (str(reply.error.reason).splitlines() or ["no reason given"])[0]
                raise ReglError(f"Flower: {self._who(node)} failed {when} ({reason}); {advice}")
        answered = {r.metadata.reply_to_message_id for r in replies}
        silent = [node for mid, node in sent.items() if mid not in answered]
        if silent:
            raise ReglError(f"Flower: {', '.join(self._who(n) for n in silent)} did not reply {when}; {advice}")
        return replies

    def image_counts(self) -> tuple[int, int]:
        return (sum(self.counts[c][0] for c in self.client_ids), sum(self.counts[c][1] for c in self.client_ids))

    def state_dict(self) -> dict[str, Any]:
        return {}  # client state lives on the nodes (Context.state), out of the server's reach

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def train(self, selected: list[int], global_weights: Weights, broadcast: dict[str, Any],
              round_index: int) -> list[ClientResult]:
        self.round = round_index
        messages = []
        for cid in selected:
            content = RecordDict({"weights": to_record(global_weights)})
            none = _pack(content, "broadcast", broadcast)
            content["round"] = ConfigRecord({"round": self.round, "broadcast-none": json.dumps(none)})
            messages.append(self._message(self.nodes[cid], MessageType.TRAIN, content))
        results = {}
        for reply in self._exchange(messages):
            c = reply.content
            info = c.metric_records["info"]
            cid = int(info["client"])
            extras: dict[str, Any] = _unpack(c, "extra", self.device)
            extras.update({k.removeprefix("extra."): v for k, v in info.items() if k.startswith("extra.")})
            results[cid] = ClientResult(cid, from_record(c.array_records["weights"], self.device),
                                        int(info["num-examples"]), int(info["steps"]), extras, int(info["num-real"]))
        return [results[cid] for cid in selected]  # the local engine's order: the server sums in this order


# --- client side -------------------------------------------------------------------------------------------
_DATA: dict[tuple, ClientData] = {}  # a node's shards, read once per process


def _client(msg: Message, context: Context) -> tuple[RunSetup, ClientData]:
    config = msg.content.config_records["config"]
    setup = RunSetup.from_json(json.loads(str(config["setup"])))
    node = context.node_config
    if "client-id" in node:
        cid = int(node["client-id"])
    elif "partition-id" in node:
        cid = setup.clients[int(node["partition-id"])]
    else:
        raise ReglError("this SuperNode has no client: start it with --node-config 'client-id=<id>'")
    clients_dir = Path(str(node.get("clients-dir", config["clients-dir"])))
    synthetic_dir = Path(str(node.get("synthetic-dir", config["synthetic-dir"])))
    key = (cid, clients_dir, synthetic_dir, setup.params.synthetic, setup.channels)
    if key not in _DATA:
        _DATA[key] = load_client(cid, clients_dir, synthetic_dir, setup.params.synthetic, setup.channels,
                                 budget=CacheBudget(setup.params.cache_mb))
    return setup, _DATA[key]


client_app = ClientApp()


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    _, data = _client(msg, context)
    info = MetricRecord({"client": data.client, "real": data.num_real, "synthetic": data.num_synthetic})
    return Message(RecordDict({"info": info}), reply_to=msg)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    setup, data = _client(msg, context)
    p = setup.params
    device = resolve_device(p.device)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = setup.model_factory()().to(device)
    content = msg.content
    round_config = content.config_records["round"]
    broadcast: dict[str, Any] = _unpack(content, "broadcast", device)
    broadcast.update({k: None for k in json.loads(str(round_config["broadcast-none"]))})
    state = _unpack(context.state, "state", device)
    result = local_update(model, build_algorithm(p), data, from_record(content.array_records["weights"], device),
                          broadcast, state, p, int(round_config["round"]), device)
    for key in [k for k in context.state.array_records if k.startswith("state.")]:
        del context.state[key]
    _pack(context.state, "state", state)

    reply = RecordDict({"weights": to_record(result.weights)})
    numbers = {k: v for k, v in result.extras.items() if isinstance(v, (int, float))}
    _pack(reply, "extra", {k: v for k, v in result.extras.items() if k not in numbers})
    reply["info"] = MetricRecord({"client": data.client, "num-examples": result.num_samples, "steps": result.steps,
                                  "num-real": result.num_real,
                                  **{f"extra.{k}": float(v) for k, v in numbers.items()}})
    return Message(reply, reply_to=msg)


# --- server side: the federated_train stage with Flower's clients -------------------------------------------
def train_on_flower(files: StageFiles, clients: list[int], p: TrainParams, grid: Grid,
                    stage_log: logging.Logger) -> None:
    """The ServerApp's body. A Flower run does not resume: the clients' state lives on the nodes."""
    setup, scored = read_setup(files, p, clients, CacheBudget(p.cache_mb))
    device = resolve_device(p.device)
    runner = FlowerClients(grid, setup, device, files.clients_dir, files.synthetic_dir)
    train_and_write(files, setup, scored, build_algorithm(p), runner, device, None, stage_log)


def serve_repository(grid: Grid, workdir: Path, stage_log: logging.Logger) -> None:
    """The regl Flower App's ServerApp (flower/server_app.py): the federated_train stage of the repository at
    ``workdir``, its params.yaml and its files as its dvc.yaml names them, the clients on the SuperNodes."""
    params = read_params(workdir / DEFAULT_PARAMS)
    exp, p = params.experiment(), params.section("train", TrainParams)
    train_on_flower(StageFiles.of(pipeline_paths(workdir), workdir), exp.clients, p, grid, stage_log)


# --- runtime ----------------------------------------------------------------------------------------------
def simulate(server_main: Callable[[Grid], None], num_clients: int, resources: FlowerParams) -> None:
    """Flower's simulation runtime on this machine: a ServerApp whose body is ``server_main(grid)``, one virtual
    SuperNode per client running ``client_app``, each given ``resources``."""
    try:
        import ray  # noqa: F401  (flwr[simulation])
        from flwr.simulation import run_simulation
    except ImportError:
        raise ReglError(f"params.yaml: train.engine = flower runs Flower's simulation runtime, which needs Ray: "
                        f"{INSTALL}") from None
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        server_main(grid)

    client_resources = {"num_cpus": resources.client_cpus, "num_gpus": resources.client_gpus}
    run_simulation(app, client_app, num_supernodes=num_clients,
                   backend_config={"client_resources": client_resources, "init_args": {"include_dashboard": False}})
