"""The paper's tables from DVC experiments, with error bars.

Reads `dvc exp show --json`: every finished run becomes a ``Run`` (its params flattened, its headline metrics).
Runs that differ only in their seeds (``RUN_KEYS``: the seeds, the thread count and the split's draw budget)
form a ``Cell``, shown as ``mean ± std (n)`` over seeds, in %. Each run is compared with its baseline
commit's params: a cell is described by what it changes. Table 1 holds the cells that change only the
method, the skew and the local epochs; Table 2 the method and the clients (Table 2c the clients on the
pathological split, for more clients than a Dirichlet split at small β can give images); the ablation table the
ReGL cells that change anything else.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

METHOD_ORDER = ["FedAvg", "FedProx", "SCAFFOLD", "FedNova", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM", "MOON",
                "ReGL"]
NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD", "fednova": "FedNova",
         "fedadam": "FedAdam", "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "fedavgm": "FedAvgM",
         "moon": "MOON"}
SEED_KEYS = frozenset({"train.seed", "personalize.seed"})
# What may differ between the runs of one cell: the seeds, the thread count (changes last bits only) and the
# Dirichlet split's draw budget (decides whether a split is found, never which: the draws are one sequence).
RUN_KEYS = SEED_KEYS | {"threads", "partition.max_tries"}
METHOD_KEYS = frozenset({"train.algorithm", "train.synthetic", "personalize.synthetic"})
TABLE1_KEYS = METHOD_KEYS | {"beta", "partition.scheme", "train.local_epochs"}
TABLE2_KEYS = METHOD_KEYS | {"clients"}
TABLE2C_KEYS = TABLE2_KEYS | {"beta", "partition.scheme", "partition.classes_per_client"}
METRICS = {  # column -> (metrics file, key), in % when shown
    "final": ("eval.json", "global_accuracy"),
    "last5": ("train.json", "accuracy_mean_last_5"),
    "personalized": ("eval.json", "personalized_accuracy_mean"),
}


METRIC_TITLES = {"final": "last round", "last5": "mean of the last five rounds", "personalized": "personalized"}


@dataclass(frozen=True)
class Run:
    name: str  # experiment name or commit
    timestamp: str
    params: dict[str, Any]  # params.yaml flattened: {"train.algorithm": "fedavg", ...}
    baseline: dict[str, Any]  # the same for the commit the run was made from
    metrics: dict[str, float | None]  # the METRICS columns, as fractions

    @property
    def method(self) -> str:
        return method_name(self.params.get("train.algorithm", "fedavg"), bool(self.params.get("train.synthetic")))

    @property
    def seed(self) -> tuple:
        return tuple(self.params.get(k) for k in sorted(SEED_KEYS))

    @property
    def changes(self) -> dict[str, Any]:
        """The params this run sets otherwise than its baseline commit, seeds aside."""
        keys = (set(self.params) | set(self.baseline)) - RUN_KEYS
        return {k: self.params.get(k) for k in sorted(keys) if self.params.get(k) != self.baseline.get(k)}


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)  # one per seed, the newest where a seed ran twice

    @property
    def first(self) -> Run:
        return self.runs[0]

    def values(self, column: str) -> list[float]:
        return [r.metrics[column] for r in self.runs if r.metrics.get(column) is not None]


def method_name(algorithm: str, synthetic: bool) -> str:
    base = NAMES.get(algorithm, algorithm)
    if synthetic:
        return "ReGL" if algorithm == "fedavg" else f"{base} + synthetic"
    return base


def mean_std(values: list[float]) -> str:
    """``mean ± std (n)`` in %, the sample standard deviation; one value shows as ``mean (1)``."""
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (1)"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} ({len(values)})"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return {k.rstrip("."): v for k, v in out.items()}


def _file(data: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The ``kind`` ("params" or "metrics") file whose name is ``name``, wherever the pipeline keeps it."""
    for path, entry in (data.get(kind) or {}).items():
        if Path(path).name == name:
            return (entry or {}).get("data") or {}
    return {}


def _records(exp_show: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], str | None]]:
    """(name, data, baseline commit's data, error) of every commit and experiment run in `dvc exp show --json`
    (the workspace is skipped: after `dvc exp run` it repeats the last experiment)."""
    for commit in exp_show:
        base = commit.get("data") or {}
        if commit.get("rev") != "workspace":
            yield commit.get("name") or commit.get("rev", "")[:7], base, base, _error(commit)
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or rev.get("rev", "")[:7]
                failed = "failed" if (exp.get("executor") or {}).get("state") == "failed" else None
                yield name, rev.get("data") or {}, base, _error(rev) or failed


def _error(entry: dict[str, Any]) -> str | None:
    err = entry.get("error")
    return (err.get("msg") or err.get("type") or "error") if isinstance(err, dict) else (str(err) if err else None)


def read_runs(exp_show: list[dict[str, Any]]) -> tuple[list[Run], list[str]]:
    """The runs that finished with training metrics, and a note for each record skipped (failed, diverged, no
    metrics)."""
    found, skipped = [], []
    for name, data, base, error in _records(exp_show):
        params = flatten(_file(data, "params", "params.yaml"))
        if error:
            skipped.append(f"{name}: {error}")
            continue
        if not params or not _file(data, "metrics", "train.json"):
            if data is not base:  # a commit without metrics is no run; an experiment without them did not finish
                skipped.append(f"{name}: no training metrics (train.json)")
            continue
        files = {f: _file(data, "metrics", f) for f in ("train.json", "eval.json")}
        if diverged := _diverged(files["train.json"]):
            skipped.append(f"{name}: {diverged}")
            continue
        metrics = {col: _number(files[f].get(key)) for col, (f, key) in METRICS.items()}
        if metrics["final"] is None:  # evaluate did not run: the trained model's own record
            metrics["final"] = _number(files["train.json"].get("accuracy"))
        found.append(Run(name, str(data.get("timestamp") or ""), params,
                         flatten(_file(base, "params", "params.yaml")), metrics))
    return found, skipped


def _diverged(train: dict[str, Any]) -> str | None:
    """Why a run that finished with a NaN or infinite test loss is no result: regl now stops such a run with an
    error (federated.train.divergence_error), so one recorded before that stop counts as the failed run it is."""
    loss = train.get("loss")
    if isinstance(loss, (int, float)) and not math.isfinite(loss):
        return f"diverged (the global model's test loss is {loss}; regl stops such a run with an error)"
    return None


def runs(exp_show: list[dict[str, Any]]) -> list[Run]:
    return read_runs(exp_show)[0]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def cells(rows: list[Run]) -> list[Cell]:
    """Runs grouped by every param but the seeds; in a cell, the newest run of each seed."""
    by_key: dict[tuple, dict[tuple, Run]] = {}
    for r in sorted(rows, key=lambda r: r.timestamp):
        key = tuple(sorted((k, repr(v)) for k, v in r.params.items() if k not in RUN_KEYS))
        by_key.setdefault(key, {})[r.seed] = r
    return [Cell(sorted(seeds.values(), key=lambda r: r.seed)) for seeds in by_key.values()]


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def grid_table(chosen: list[Cell], column_of: Callable[[Run], Any], title: Callable[[Any], str],
               metric: str) -> str:
    """Methods x columns, each cell ``mean ± std (n)`` of ``metric``."""
    at = {(c.first.method, column_of(c.first)): c for c in chosen}
    columns = sorted({col for _, col in at})
    methods = sorted({m for m, _ in at}, key=_method_rank)
    lines = ["| method | " + " | ".join(title(c) for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for m in methods:
        row = [mean_std(at[(m, c)].values(metric)) if (m, c) in at else "" for c in columns]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _only(cell: Cell, allowed: frozenset[str]) -> bool:
    return set(cell.first.changes) <= allowed


def _table1_cells(all_cells: list[Cell]) -> list[Cell]:
    return [c for c in all_cells if _only(c, TABLE1_KEYS)
            and c.first.params.get("partition.scheme", "dirichlet") in ("dirichlet", "iid")]


def table1(all_cells: list[Cell], metric: str = "final") -> str:
    """Methods x (skew, local epochs): the cells that change nothing else; IID runs get their own columns."""
    chosen = _table1_cells(all_cells)

    def column(r: Run) -> tuple[bool, float, int]:
        iid = r.params.get("partition.scheme") == "iid"
        return iid, 0.0 if iid else float(r.params.get("beta", "nan")), int(r.params.get("train.local_epochs", 1))

    def title(c: tuple[bool, float, int]) -> str:
        return f"IID, E = {c[2]}" if c[0] else f"β = {c[1]:g}, E = {c[2]}"

    return grid_table(chosen, column, title, metric)


def table2(all_cells: list[Cell], beta: float, metric: str = "final") -> str:
    """Methods x number of clients, the Dirichlet cells at one ``beta`` that change nothing else."""
    chosen = [c for c in all_cells if _only(c, TABLE2_KEYS | {"beta"})
              and c.first.params.get("partition.scheme", "dirichlet") == "dirichlet"
              and float(c.first.params.get("beta", "nan")) == beta]
    return grid_table(chosen, lambda r: len(r.params.get("clients") or []), lambda m: f"M = {m}", metric)


def _pathological(cell: Cell) -> bool:
    return cell.first.params.get("partition.scheme") == "pathological" and _only(cell, TABLE2C_KEYS)


def table2c(all_cells: list[Cell], metric: str = "final") -> str | None:
    """Methods x (clients, classes a client) on the pathological split, which gives images to any number of
    clients (a Dirichlet split at β = 0.01 over 10 classes cannot give 50 clients 10 images each)."""
    chosen = [c for c in all_cells if _pathological(c)]
    if not chosen:
        return None

    def column(r: Run) -> tuple[int, int]:
        return len(r.params.get("clients") or []), int(r.params.get("partition.classes_per_client", 2))

    return grid_table(chosen, column, lambda c: f"M = {c[0]}, {c[1]} class{'es' if c[1] != 1 else ''} a client",
                      metric)


def ablations(all_cells: list[Cell]) -> str:
    """ReGL's cells that change something outside the tables' axes, beside ReGL at the baseline's params."""
    regl = [c for c in all_cells if c.first.method == "ReGL" and _only(c, TABLE1_KEYS | TABLE2_KEYS)
            and not (set(c.first.changes) - METHOD_KEYS)]
    other = [c for c in all_cells if c.first.method == "ReGL" and not _only(c, TABLE1_KEYS | TABLE2_KEYS)
             and not _pathological(c)]
    lines = ["| ReGL variant | final | mean of last 5 | personalized |", "|---|---|---|---|"]
    for label, c in [("as committed (params.yaml)", c) for c in regl] + sorted(
            ((_describe(c), c) for c in other), key=lambda lc: lc[0]):
        lines.append(f"| {label} | " + " | ".join(mean_std(c.values(m)) for m in METRICS) + " |")
    return "\n".join(lines)


def unplaced(all_cells: list[Cell]) -> str | None:
    """The cells no table above holds, each with what it changes, so that no run disappears unseen."""
    placed = {id(c) for c in all_cells if _only(c, TABLE1_KEYS) or _only(c, TABLE2_KEYS | {"beta"})
              or _pathological(c)
              or c.first.method == "ReGL"}
    rest = sorted((((c.first.method, _describe(c)), c) for c in all_cells if id(c) not in placed),
                  key=lambda lc: lc[0])
    if not rest:
        return None
    lines = ["| method | changes | final | mean of last 5 | personalized |", "|---|---|---|---|---|"]
    for (m, label), c in rest:
        lines.append(f"| {m} | {label} | " + " | ".join(mean_std(c.values(col)) for col in METRICS) + " |")
    return "\n".join(lines)


def _describe(cell: Cell) -> str:
    return ", ".join(f"{k} = {_short(v)}" for k, v in cell.first.changes.items() if k not in METHOD_KEYS) or "–"


def _short(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def skew_recovery(all_cells: list[Cell], beta: float, metric: str = "final") -> str | None:
    """What ReGL recovers of the accuracy label skew costs FedAvg, on the means over seeds:
    (ReGL − FedAvg) / (IID − FedAvg), with the gap to the IID reference in points."""
    same_e = {}
    for c in _table1_cells(all_cells):
        p = c.first.params
        iid = p.get("partition.scheme") == "iid"
        if iid or float(p.get("beta", "nan")) == beta:
            same_e.setdefault(int(p.get("train.local_epochs", 1)), {})[("IID" if iid else c.first.method)] = c
    out = []
    for e, at in sorted(same_e.items()):
        if {"FedAvg", "ReGL", "IID"} <= set(at):
            fedavg, regl, iid = (statistics.fmean(at[k].values(metric)) for k in ("FedAvg", "ReGL", "IID"))
            share = (regl - fedavg) / (iid - fedavg) if iid != fedavg else float("nan")
            out.append(f"{METRIC_TITLES[metric]}, β = {beta:g}, E = {e}: ReGL recovers {100 * share:.0f} % of "
                       "what skew costs FedAvg "
                       f"((ReGL − FedAvg) / (IID − FedAvg) = ({100 * regl:.1f} − {100 * fedavg:.1f}) / "
                       f"({100 * iid:.1f} − {100 * fedavg:.1f})); ReGL is {100 * (iid - regl):.1f} points "
                       f"under the IID reference")
    return "\n".join(out) or None
