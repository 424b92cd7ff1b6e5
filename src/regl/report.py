"""The paper's tables from DVC experiments: read `dvc exp show --json`, one row per finished run, and print
methods x (beta, local epochs) (Table 1) and methods x number of clients (Table 2) as Markdown, filling only
the cells that were run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

METHOD_ORDER = ["FedAvg", "FedProx", "SCAFFOLD", "FedNova", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM", "MOON",
                "ReGL"]
NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD", "fednova": "FedNova",
         "fedadam": "FedAdam", "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "fedavgm": "FedAvgM",
         "moon": "MOON"}


@dataclass(frozen=True)
class Run:
    name: str  # experiment name or commit
    timestamp: str
    method: str
    beta: float
    local_epochs: int
    num_clients: int
    scheme: str
    global_accuracy: float | None
    personalized_accuracy: float | None


def method_name(algorithm: str, synthetic: bool) -> str:
    base = NAMES.get(algorithm, algorithm)
    if synthetic:
        return "ReGL" if algorithm == "fedavg" else f"{base} + synthetic"
    return base


def _records(exp_show: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, data) of every baseline commit and every experiment run in `dvc exp show --json` output (the
    workspace is skipped: after `dvc exp run` it repeats the last experiment)."""
    for commit in exp_show:
        if commit.get("rev") != "workspace":
            yield commit.get("name") or commit.get("rev", "")[:7], commit.get("data") or {}
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                yield rev.get("name") or exp.get("name") or rev.get("rev", "")[:7], rev.get("data") or {}


def _file(data: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The ``kind`` ("params" or "metrics") file whose name is ``name``, wherever the pipeline keeps it."""
    for path, entry in (data.get(kind) or {}).items():
        if Path(path).name == name:
            return (entry or {}).get("data") or {}
    return {}


def runs(exp_show: list[dict[str, Any]]) -> list[Run]:
    """Runs that have training metrics; when several share a cell, all are kept (``table`` takes the newest)."""
    out = []
    for name, data in _records(exp_show):
        params = _file(data, "params", "params.yaml")
        trained = _file(data, "metrics", "train.json")
        evaluated = _file(data, "metrics", "eval.json")
        if not params or not trained:
            continue
        train = params.get("train") or {}
        out.append(Run(
            name=name,
            timestamp=str(data.get("timestamp") or ""),
            method=method_name(train.get("algorithm", "fedavg"), bool(train.get("synthetic"))),
            beta=float(params.get("beta", float("nan"))),
            local_epochs=int(train.get("local_epochs", 1)),
            num_clients=len(params.get("clients") or []),
            scheme=(params.get("partition") or {}).get("scheme", "dirichlet"),
            global_accuracy=evaluated.get("global_accuracy", trained.get("accuracy")),
            personalized_accuracy=evaluated.get("personalized_accuracy_mean"),
        ))
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _cell(run: Run | None, personalized: bool) -> str:
    if run is None:
        return ""
    return f"{_pct(run.global_accuracy)} / {_pct(run.personalized_accuracy)}" if personalized \
        else _pct(run.global_accuracy)


def _table(rows: list[Run], column_of, column_title, personalized: bool) -> str:
    latest: dict[tuple[str, Any], Run] = {}
    for r in sorted(rows, key=lambda r: r.timestamp):
        latest[(r.method, column_of(r))] = r
    columns = sorted({c for _, c in latest})
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in latest)]
    methods += sorted({k[0] for k in latest} - set(methods))
    header = "| method | " + " | ".join(column_title(c) for c in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_cell(latest.get((m, c)), personalized) for c in columns) + " |")
    return "\n".join(lines)


def table1(rows: list[Run]) -> str:
    """Methods x (beta, local epochs): the Dirichlet runs, then the IID ones (the reference a skewed run is
    measured against); cells: global / mean personalized accuracy (%)."""
    rows = [r for r in rows if r.scheme in ("dirichlet", "iid")]

    def column(r: Run) -> tuple[bool, float, int]:
        iid = r.scheme == "iid"
        return iid, 0.0 if iid else r.beta, r.local_epochs

    def title(c: tuple[bool, float, int]) -> str:
        return f"IID, E = {c[2]}" if c[0] else f"β = {c[1]:g}, E = {c[2]}"

    return _table(rows, column, title, True)


def table2(rows: list[Run], beta: float) -> str:
    """Methods x number of clients, the Dirichlet runs at one ``beta`` (as in the paper); cells: global accuracy
    (%)."""
    rows = [r for r in rows if r.scheme == "dirichlet" and r.beta == beta]
    return _table(rows, lambda r: r.num_clients, lambda m: f"M = {m}", False)
