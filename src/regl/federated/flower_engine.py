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

With ``train.flower.generate_on_nodes`` ReGL's client side runs on the nodes too: before round 1 the server sends
each node the base generator and the `finetune` / `generate` params (a ``train.synthesize`` message); the node
fine-tunes its LoRA and makes its synthetic shard in its own folder (node config ``node-dir``; simulated nodes:
``.regl/nodes/client_<id>/`` under the server's root, regl.federated.node_side) and trains on it in the rounds.

Every reply is checked against what the protocol lets a node send (``audit_reply``): model-shaped arrays and
numbers with known names only — no image, no label list, no adapter weights; anything else ends the run naming
the node. ``train.flower.message_log`` lists every message the server received.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from regl.data.client_data import ClientData, load_client
from regl.data.naming import client_file, client_name
from regl.core.device import resolve_device
from regl.core.errors import ReglError
from regl.federated.algorithm import ClientResult
from regl.federated.engine import local_update
from regl.federated.node_side import NodeFolder, NodeWork, folder_arrays, prepare_client, write_folder
from regl.federated.registry import build_algorithm
from regl.core.params import DEFAULT_PARAMS, Params, read_params
from regl.core.stage import pipeline_paths
from regl.federated.train import RunSetup, StageFiles, read_setup, train_and_write
from regl.federated.train_params import FlowerParams, TrainParams
from regl.federated.weights import Weights
from regl.data.imageset import CacheBudget

INSTALL = "pip install 'regl[flower]'"
try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError:
    raise ReglError(f"params.yaml: train.engine = flower needs Flower, an optional extra: {INSTALL}") from None


log = logging.getLogger(__name__)
SYNTHESIZE = f"{MessageType.TRAIN}.synthesize"  # ReGL's client side on the node, before round 1


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


# --- what a node may send ----------------------------------------------------------------------------------
# The metric names each kind of reply may carry (train replies: also an algorithm's numbers, "extra.<name>").
REPLY_METRICS = {
    MessageType.QUERY: {"client", "real", "synthetic"},
    SYNTHESIZE: {"client", "synthetic", "finetune-s", "generate-s", "reused-lora", "reused-synthetic", "chunks-made",
                 "threads"},
    MessageType.TRAIN: {"client", "num-examples", "steps", "num-real"},
}


def audit_reply(content: RecordDict, kind: str, shapes: list[tuple[int, ...]]) -> str | None:
    """What in a node's reply to a ``kind`` message the protocol does not allow, or None. Allowed: one metric record
    ``info`` of single numbers with the names REPLY_METRICS lists; for a train reply also the weights (the model's
    tensors, ``shapes``, in order) and an algorithm's extras (``extra.<name>``: tensors shaped like the model's,
    e.g. SCAFFOLD's control-variate change). Nothing else: no config record, no image, no label list, no adapter."""
    if content.config_records:
        return f"config record(s) {sorted(content.config_records)}"
    if set(content.metric_records) != {"info"}:
        return f"metric records {sorted(content.metric_records)} (only 'info' is allowed)"
    for name, value in content.metric_records["info"].items():
        if name not in REPLY_METRICS[kind] and not (kind == MessageType.TRAIN and name.startswith("extra.")):
            return f"metric {name!r}"
        if not isinstance(value, (int, float)):
            return f"metric {name!r} holding a {type(value).__name__}, not a single number"
    allowed = set(shapes)
    for name, record in content.array_records.items():
        got = [tuple(a.shape) for a in record.values()]
        if kind != MessageType.TRAIN or not (name == "weights" or name.startswith("extra.")):
            return f"array record {name!r} ({len(got)} array(s), first of shape {got[0] if got else ()})"
        if (name == "weights" and got != shapes) or len(got) > len(shapes) or not set(got) <= allowed:
            odd = next((g for g in got if g not in allowed), got[0] if got else ())
            return f"array record {name!r} with arrays not shaped like the model's (e.g. {odd})"
    return None


def message_summary(reply: Message, kind: str) -> dict[str, Any]:
    """One line of the message log: what a reply held, without its values' bulk."""
    c = reply.content
    return {"kind": kind, "node": reply.metadata.src_node_id, "group": reply.metadata.group_id,
            "error": str(reply.error.reason) if reply.has_error() else None,
            "arrays": {n: [[a.dtype, list(a.shape)] for a in r.values()] for n, r in c.array_records.items()},
            "metrics": {n: dict(r) for n, r in c.metric_records.items()},
            "configs": {n: sorted(r) for n, r in c.config_records.items()}}


# --- server side -------------------------------------------------------------------------------------------
class FlowerClients:
    """The client runner of a ServerApp: the clients are Flower nodes, reached through ``grid``. Nodes that hold
    no shard paths of their own read the server's ``clients_dir`` / ``synthetic_dir``."""

    def __init__(self, grid: Grid, setup: RunSetup, device: torch.device, clients_dir: Path, synthetic_dir: Path,
                 work: NodeWork | None = None, wait_s: float = 300.0):
        self.grid, self.device, self.round = grid, device, 0
        self.client_ids = sorted(setup.clients)
        flower = setup.params.flower
        self.timeout, self.log_file = flower.reply_timeout_s, Path(flower.message_log) if flower.message_log else None
        self.shapes = [tuple(t.shape) for t in setup.model_factory()().state_dict().values()]
        self.config = ConfigRecord({"setup": json.dumps(setup.to_json()), "clients-dir": str(clients_dir),
                                    "synthetic-dir": str(synthetic_dir),
                                    "nodes-dir": str(work.nodes_root if work else "")})
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.nodes, self.counts = self._discover(wait_s)
        if work is not None:
            self._synthesize_on_nodes(work)

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

    def _synthesize_on_nodes(self, work: NodeWork) -> None:
        """ReGL's client side on every node: the base generator and the params go out, each node fine-tunes its
        LoRA and makes its synthetic shard, and only its figures come back."""
        files = folder_arrays(work.generator)
        if not files:
            raise ReglError(f"{work.generator}: no base generator to send the nodes (dvc repro pretrain_generator)")
        content = {"generator": ArrayRecord(array_dict={name: Array(data) for name, data in files.items()}),
                   "params": ConfigRecord({"finetune": json.dumps(work.finetune.model_dump()),
                                           "generate": json.dumps(work.generate.model_dump())})}
        log.info("sending the base generator (%.1f MB) to %d node(s); each adapts it and generates its images",
                 sum(a.nbytes for a in files.values()) / 1e6, len(self.nodes))
        messages = [self._message(self.nodes[c], SYNTHESIZE, RecordDict(dict(content))) for c in self.client_ids]
        for reply in self._exchange(messages):
            info = reply.content.metric_records["info"]
            cid = int(info["client"])
            self.counts[cid] = (self.counts[cid][0], int(info["synthetic"]))
            log.info("client %d: LoRA %s in %.1f s, %d synthetic images %s in %.1f s (node %d, %d thread(s))", cid,
                     "kept" if info["reused-lora"] else "fine-tuned", info["finetune-s"], int(info["synthetic"]),
                     "kept" if info["reused-synthetic"] else "generated", info["generate-s"],
                     reply.metadata.src_node_id, int(info["threads"]))

    def _who(self, node: int) -> str:
        client = next((c for c, n in self.nodes.items() if n == node), None)
        return f"node {node}" if client is None else f"client {client} (node {node})"

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """Send and wait for every reply. A node that fails, or drops out (its SuperNode stopped: the SuperLink
        answers for it once it misses its heartbeats, about a minute), ends the run with one line naming its
        client; the stage has written nothing yet, so the outputs of an earlier run stay as they were."""
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        kind = messages[0].metadata.message_type
        when = f"in round {self.round + 1}" if kind == MessageType.TRAIN else "before round 1"
        advice = "nothing was written; restart its SuperNode and run federated_train again"
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a") as out:
                out.writelines(json.dumps(message_summary(r, kind)) + "\n" for r in replies)
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                reason = (str(reply.error.reason).splitlines() or ["no reason given"])[0]
                raise ReglError(f"Flower: {self._who(node)} failed {when} ({reason}); {advice}")
            breach = audit_reply(reply.content, kind, self.shapes)
            if breach is not None:
                raise ReglError(f"Flower: {self._who(node)} sent {breach} {when}, which regl's protocol does not "
                                f"let a node send; nothing was written")
        answered = {r.metadata.reply_to_message_id for r in replies}
        silent = [node for mid, node in sent.items() if mid not in answered]
        if silent:
            waited = f" within train.flower.reply_timeout_s = {self.timeout:g} s" if self.timeout else ""
            raise ReglError(f"Flower: {', '.join(self._who(n) for n in silent)} did not reply {when}{waited}; "
                            f"{advice}")
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


@dataclass(frozen=True)
class NodeSetup:
    """Which client a node serves and where its data is: node config first, else the server's paths."""

    setup: RunSetup
    client: int
    clients_dir: Path
    synthetic_dir: Path
    folder: NodeFolder  # what the node makes with generate_on_nodes

    @property
    def real_file(self) -> Path:
        return client_file(self.clients_dir, self.client)


def _node(msg: Message, context: Context) -> NodeSetup:
    config = msg.content.config_records["config"]
    setup = RunSetup.from_json(json.loads(str(config["setup"])))
    node = context.node_config
    if "client-id" in node:
        cid = int(node["client-id"])
    elif "partition-id" in node:
        cid = setup.clients[int(node["partition-id"])]
    else:
        raise ReglError("this SuperNode has no client: start it with --node-config 'client-id=<id>'")
    own = node.get("node-dir")
    folder = NodeFolder(Path(str(own)) if own else Path(str(config["nodes-dir"])) / client_name(cid))
    synthetic_dir = (folder.synthetic_dir() if setup.params.flower.generate_on_nodes
                     else Path(str(node.get("synthetic-dir", config["synthetic-dir"]))))
    return NodeSetup(setup, cid, Path(str(node.get("clients-dir", config["clients-dir"]))), synthetic_dir, folder)


def _client(msg: Message, context: Context, synthetic: bool | None = None) -> tuple[RunSetup, ClientData]:
    """The node's setup and data (with its synthetic shard where the run trains on one, unless ``synthetic``
    says otherwise)."""
    at = _node(msg, context)
    setup = at.setup
    synthetic = setup.params.synthetic if synthetic is None else synthetic
    key = (at.client, at.clients_dir, at.synthetic_dir, synthetic, setup.channels)
    if key not in _DATA:
        _DATA[key] = load_client(at.client, at.clients_dir, at.synthetic_dir, synthetic, setup.channels,
                                 budget=CacheBudget(setup.params.cache_mb))
    return setup, _DATA[key]


client_app = ClientApp()


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    # with generate_on_nodes the node makes its synthetic shard after this (train.synthesize): real images only
    _, data = _client(msg, context, False if _node(msg, context).setup.params.flower.generate_on_nodes else None)
    info = MetricRecord({"client": data.client, "real": data.num_real, "synthetic": data.num_synthetic})
    return Message(RecordDict({"info": info}), reply_to=msg)


@client_app.train("synthesize")
def _synthesize(msg: Message, context: Context) -> Message:
    """ReGL's client side on this node: the base generator received, its LoRA fine-tuned on its own shard, its
    synthetic shard generated (regl.federated.node_side), kept in its folder; only figures go back."""
    from regl.generator.lora import FinetuneParams
    from regl.generator.sample import GenerateParams

    at = _node(msg, context)
    params = msg.content.config_records["params"]
    cfg = FinetuneParams.model_validate(json.loads(str(params["finetune"])))
    g = GenerateParams.model_validate(json.loads(str(params["generate"])))
    arrays = msg.content.array_records["generator"]
    write_folder({name: arrays[name].numpy() for name in arrays}, at.folder.generator)
    figures = prepare_client(at.client, at.real_file, at.folder, cfg, g)
    for key in [k for k in _DATA if k[0] == at.client]:
        del _DATA[key]  # the shard may have been made again
    return Message(RecordDict({"info": MetricRecord(figures)}), reply_to=msg)


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
                    stage_log: logging.Logger, work: NodeWork | None = None) -> None:
    """The ServerApp's body. A Flower run does not resume: the clients' state lives on the nodes. ``work``: what
    the nodes need to make their own synthetic shards (``train.flower.generate_on_nodes``)."""
    setup, scored = read_setup(files, p, clients, CacheBudget(p.cache_mb))
    device = resolve_device(p.device)
    runner = FlowerClients(grid, setup, device, files.clients_dir, files.synthetic_dir, work)
    train_and_write(files, setup, scored, build_algorithm(p), runner, device, None, stage_log)


def node_work(p: TrainParams, params: Params, generator: Path, root: Path = Path(".")) -> NodeWork | None:
    """What the nodes need to make their own synthetic shards, where they do (``train.flower.generate_on_nodes``
    and a run on synthetic images), else None."""
    if not (p.synthetic and p.flower.generate_on_nodes):
        return None
    work = NodeWork.of(params, generator, root)
    if work.generate.oracle:
        raise ReglError("params.yaml: train.flower.generate_on_nodes = true needs generate.oracle = false (the "
                        "oracle's images come from the server's public pool, not from a node)")
    return work


def serve_repository(grid: Grid, workdir: Path, stage_log: logging.Logger) -> None:
    """The regl Flower App's ServerApp (flower/server_app.py): the federated_train stage of the repository at
    ``workdir``, its params.yaml and its files as its dvc.yaml names them, the clients on the SuperNodes."""
    params = read_params(workdir / DEFAULT_PARAMS)
    exp, p = params.experiment(), params.section("train", TrainParams)
    paths = pipeline_paths(workdir)
    train_on_flower(StageFiles.of(paths, workdir), exp.clients, p, grid, stage_log,
                    node_work(p, params, workdir / paths.models.generator, workdir))


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
