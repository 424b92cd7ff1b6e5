"""Tables and figures with error bars from DVC experiments, laid out by a grids file.

Reads `dvc exp show --json`: every finished run becomes a ``Run`` (its params flattened, its headline metrics).
A grids file (experiments/grids.yaml) names tables: rows are methods, columns settings, each cell a set of
overrides over params.yaml. A run belongs to a cell when it agrees with the cell's params on every key of
params.yaml (the cell's override, else params.yaml's value), seeds and ``HOW_KEYS`` aside, and, for a cell that
reads no synthetic image, the generator's sections aside (``GENERATOR_SECTIONS``); so a changed default (a new
pre-training recipe) leaves the runs made before it out of every cell it changes, and only those. A cell shows
``mean ± std (n)`` over its runs, in %. Nothing here knows a particular table: the file says what to show.

A *tuned* grid (``tune:``) searches each cell: its method's candidates (``searches:``, the same number for every
method) run at the tune seed, and the one with the best validation accuracy (mean of the last five rounds; the
validation split, never the test split) is the cell's setting, run at the grid's seeds and shown on the test split.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from regl.differences import difference

SEED_KEYS = ("train.seed", "personalize.seed")
# How a run was made, not what it is: the thread count changes last bits only, and the Dirichlet split's draw
# budget decides whether a split is found, never which (the draws are one sequence). A sweep sets these where a
# cell names them.
RUN_KEYS = frozenset({*SEED_KEYS, "threads", "partition.max_tries"})
# Also how, not what, and never set by a cell: where the data is read from, caching and loading, devices, the
# size of generate's resumable chunks (same bytes at any size), the Flower runtime's resources, where the nodes'
# synthetic images are made (the same bytes), its timeout and message log.
HOW_KEYS = RUN_KEYS | {"prepare.fashion_mnist_dir", "compute.loader_workers", "compute.prefetch",
                       "compute.cache_mb", "compute.scoring_batch", "generate.chunk_size", "train.device",
                       "personalize.device", "evaluate.device", "train.flower.client_cpus",
                       "train.flower.client_gpus", "train.flower.generate_on_nodes", "train.flower.reply_timeout_s",
                       "train.flower.message_log"}
# What a run reads only through its synthetic images (train.synthetic or personalize.synthetic).
GENERATOR_SECTIONS = ("generator.", "finetune.", "generate.")
METRICS = {  # column -> (metrics file, key, title, short title), fractions, shown in %
    "final": ("eval.json", "global_accuracy", "global test accuracy at the last round", "last round"),
    "last5": ("train.json", "accuracy_mean_last_5", "global test accuracy, mean of the last five rounds",
              "mean of the last five rounds"),
    "personalized": ("eval.json", "personalized_accuracy_mean", "personalized test accuracy, mean over clients",
                     "personalized"),
}
# What metrics/generator.json says of a run's synthetic images (generator_quality; docs/generator.md, "Quality")
GENERATOR_FIGURES = ("classifiability", "frechet", "clients_adapted_closer", "clients", "clients_measured",
                     "frechet_vanilla_mean", "frechet_adapted_mean")


@dataclass(frozen=True)
class Run:
    name: str  # experiment name or commit
    timestamp: str
    params: dict[str, Any]  # params.yaml flattened: {"train.algorithm": "fedavg", ...}
    metrics: dict[str, float | None]  # the METRICS columns (test split), as fractions
    # the validation split's accuracy, mean of the last five rounds: what tuning selects on (None: the run had
    # no validation split, or diverged)
    validation: float | None = None
    # test accuracy after each round (train.json's by_round; empty for a run made before it was recorded)
    curve: tuple[float, ...] = ()
    # it diverged: no result in any table, but it ran (a sweep does not redo it; a search counts it as the worst)
    diverged: bool = False
    # its synthetic images' figures (metrics/generator.json: GENERATOR_FIGURES); empty for a run that made none
    generator: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> Any:
        return self.params.get("train.seed")


@dataclass(frozen=True)
class Cell:
    grid: str
    row: str
    column: str
    label: str  # the row's (method's) label
    title: str  # the column's title
    overrides: dict[str, Any]  # the -S overrides, method's then column's
    seeds: tuple[int, ...]
    stages: tuple[str, ...] | None  # only these stages (dvc exp run -s), or all
    setting: dict[str, Any] | None = None  # a tuned cell's candidate: its search overrides

    @property
    def name(self) -> str:
        return f"{self.row}-{self.column}"

    @property
    def ref(self) -> str:
        return f"{self.grid}/{self.row}/{self.column}"


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


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``flatten``'s inverse: {"train.lr": 0.05} -> {"train": {"lr": 0.05}}."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *keys, last = dotted.split(".")
        node = nested
        for key in keys:
            node = node.setdefault(key, {})
        node[last] = value
    return nested


# --- runs from `dvc exp show --json` ---------------------------------------------------------------------------

def _file(data: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The ``kind`` ("params" or "metrics") file whose name is ``name``, wherever the pipeline keeps it."""
    for path, entry in (data.get(kind) or {}).items():
        if Path(path).name == name:
            return (entry or {}).get("data") or {}
    return {}


def _records(exp_show: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], bool, str | None]]:
    """(name, data, is a commit, error) of every commit and experiment run in `dvc exp show --json` (the
    workspace is skipped: after `dvc exp run` it repeats the last experiment)."""
    for commit in exp_show:
        if commit.get("rev") != "workspace":
            yield commit.get("name") or commit.get("rev", "")[:7], commit.get("data") or {}, True, _error(commit)
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or rev.get("rev", "")[:7]
                failed = "failed" if (exp.get("executor") or {}).get("state") == "failed" else None
                yield name, rev.get("data") or {}, False, _error(rev) or failed


def _error(entry: dict[str, Any]) -> str | None:
    err = entry.get("error")
    return (err.get("msg") or err.get("type") or "error") if isinstance(err, dict) else (str(err) if err else None)


def read_runs(exp_show: list[dict[str, Any]], diverged: bool = False) -> tuple[list[Run], list[str]]:
    """The runs that finished with training metrics, and a note for each record skipped (failed, diverged, no
    metrics). ``diverged``: keep the diverged runs too, flagged (noted all the same): they ran, so a sweep does not
    redo them and a search counts them; no table shows their figures."""
    found, skipped = [], []
    for name, data, commit, error in _records(exp_show):
        params = flatten(_file(data, "params", "params.yaml"))
        if error:
            skipped.append(f"{name}: {error}")
            continue
        if not params or not _file(data, "metrics", "train.json"):
            if not commit:  # a commit without metrics is no run; an experiment without them did not finish
                skipped.append(f"{name}: no training metrics (train.json)")
            continue
        files = {f: _file(data, "metrics", f) for f in ("train.json", "eval.json", "generator.json")}
        if why := _diverged(files["train.json"]):
            skipped.append(f"{name}: {why}")
            if not diverged:
                continue
        metrics = {col: _number(files[f].get(key)) for col, (f, key, *_) in METRICS.items()}
        if metrics["final"] is None:  # evaluate did not run: the trained model's own record
            metrics["final"] = _number(files["train.json"].get("accuracy"))
        validation = _number(files["train.json"].get("val_accuracy_mean_last_5"))
        curve = tuple((files["train.json"].get("by_round") or {}).get("accuracy") or ())
        generator = {k: files["generator.json"][k] for k in GENERATOR_FIGURES if k in files["generator.json"]}
        found.append(Run(name, str(data.get("timestamp") or ""), params, metrics, validation, curve, bool(why),
                         generator))
    return found, skipped


def _diverged(train: dict[str, Any]) -> str | None:
    """Why a run that finished with a NaN or infinite test loss is no result: regl stops such a run with an
    error (federated.train.divergence_error), so one recorded before that stop counts as the failed run it is."""
    loss = train.get("loss")
    if isinstance(loss, (int, float)) and not math.isfinite(loss):
        return f"diverged (the global model's test loss is {loss}; regl stops such a run with an error)"
    if train.get("diverged"):  # the sweep's record of a run that stopped so (experiments/sweep.py)
        return f"diverged ({train['diverged']})"
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# --- the grids file --------------------------------------------------------------------------------------------

class Grids:
    """A grids file's cells, each identified by its params over ``keys`` (every key the file sets)."""

    def __init__(self, doc: dict[str, Any], defaults: dict[str, Any]):
        self.doc = doc
        self.methods: dict[str, Any] = doc.get("methods") or {}
        self.grids: dict[str, Any] = doc.get("grids") or {}
        self.figures: dict[str, Any] = doc.get("figures") or {}
        # name -> {title, rows: {label: {a: ref, b: ref or [refs]}}}: a − b with its standard error
        self.differences: dict[str, Any] = doc.get("differences") or {}
        self.searches: dict[str, dict[str, list]] = doc.get("searches") or {}
        # params.yaml keys added after some runs were made, each with the value that does what those runs did
        self.added_keys: dict[str, Any] = doc.get("added_keys") or {}
        # a tuned grid's (row, column) -> its candidates; its cells are the candidates
        self.tuned: dict[str, list[Cell]] = {}
        # a following grid's cell -> (the cell without the setting, the tuned cell whose choice it takes)
        self.following: dict[str, tuple[Cell, str]] = {}
        self.cells: dict[str, Cell] = {c.ref: c for name in self.grids for c in self._cells(name)}
        templates = [t for t, _ in self.following.values()]
        self.keys = sorted({k for c in [*self.cells.values(), *templates] for k in c.overrides} - RUN_KEYS)
        missing = [k for k in self.keys if k not in defaults]
        if missing:
            raise ValueError(f"grids file sets {missing}, which params.yaml does not have")
        self.defaults = {k: v for k, v in defaults.items() if k not in HOW_KEYS}

    def _cells(self, grid: str) -> Iterator[Cell]:
        spec = self.grids[grid]
        exceptions = spec.get("cell_seeds") or {}
        for column, col in (spec.get("columns") or {}).items():
            for row in col.get("rows") or spec["rows"]:
                if row not in self.methods:
                    raise ValueError(f"grid {grid}: row {row!r} is not under methods")
                if "_" in column:  # a tuned cell's runs are named <column>_<setting>
                    raise ValueError(f"grid {grid}: column {column!r}: a column id holds no '_'")
                seeds = exceptions.get(f"{row}/{column}", col.get("seeds", spec.get("seeds", [])))
                method = self.methods[row]
                # the grid's own keys (e.g. the generator recipe its runs were made with), then the method's,
                # then the column's: the most specific wins
                cell = Cell(grid, row, column, method.get("label", row), str(col.get("title", column)),
                            {**(spec.get("set") or {}), **(method.get("set") or {}), **(col.get("set") or {})},
                            tuple(seeds),
                            tuple(col["stages"]) if col.get("stages") else None)
                if "follows" in spec:
                    self.following[cell.ref] = (cell, f"{spec['follows'].split('/')[0]}/{row}/"
                                                      f"{spec['follows'].split('/')[1]}")
                    continue
                if "tune" not in spec:
                    yield cell
                    continue
                options = self._candidates(grid, row, spec["tune"])
                self.tuned[cell.ref] = [Cell(grid, row, f"{column}_{tag(o)}", cell.label, cell.title,
                                             {**cell.overrides, **o}, (spec["tune"]["seed"],), cell.stages, o)
                                        for o in options]
                yield from self.tuned[cell.ref]

    def _candidates(self, grid: str, row: str, tune: dict[str, Any]) -> list[dict[str, Any]]:
        """The settings a tuned cell of method ``row`` tries: every combination of its search's values."""
        space = self.searches.get(row)
        if not space:
            raise ValueError(f"grid {grid}: row {row!r} has no search under searches")
        options = [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
        if len(options) != tune["budget"]:
            raise ValueError(f"grid {grid}: the search of {row!r} tries {len(options)} settings; every method gets "
                             f"the same budget, tune.budget = {tune['budget']}")
        return options

    def choice(self, ref: str, runs: list[Run]) -> Cell | None:
        """The tuned cell's setting: the candidate whose run at the tune seed has the best validation accuracy
        a diverged candidate the worst; None while a candidate has not run. Reads the validation figure only: the
        test split never picks a setting."""
        scored = []
        for cand in self.tuned[ref]:
            run = self.search_run(cand, runs)
            if run is None:
                return None
            scored.append((-math.inf if run.diverged else run.validation, cand))
        return max(scored, key=lambda sc: sc[0])[1]  # the first of equals: the search's order

    def search_run(self, cand: Cell, runs: list[Run]) -> Run | None:
        """A candidate's run at the tune seed with a validation figure, or diverged (one made before the validation
        split existed is the same training but cannot be chosen on: it runs again)."""
        return next((r for r in self.runs_of(cand, runs) if r.seed == self.tune_seed(cand)
                     and (r.validation is not None or r.diverged)), None)

    def tune_seed(self, cell: Cell) -> int | None:
        tune = self.grids[cell.grid].get("tune")
        return tune["seed"] if tune else None

    def resolved_cells(self, runs: list[Run]) -> list[Cell]:
        """The cells the runs decide: every tuned cell's choice at the grid's seeds, and every following grid's
        cell at the setting its tuned cell chose (those whose search has finished)."""
        cells = [self._resolved(ref, runs) for ref in [*self.tuned, *self.following]]
        return [c for c in cells if c is not None]

    def cell(self, ref: str, runs: list[Run]) -> Cell | None:
        """The cell at ``grid/row/column``: a fixed one, or the one the runs decide (None while undecided)."""
        if ref in self.cells:
            return self.cells[ref]
        if ref not in self.tuned and ref not in self.following:
            raise ValueError(f"{ref!r}: no such grid/row/column")
        return self._resolved(ref, runs)

    def _resolved(self, ref: str, runs: list[Run]) -> Cell | None:
        """A tuned cell at its choice with the grid's seeds (the runs that report it on the test split), or a
        following cell at the setting its tuned cell chose; None while that search has not finished."""
        if ref in self.tuned:
            best = self.choice(ref, runs)
            if best is None:
                return None
            spec = self.grids[best.grid]
            column = ref.split("/")[2]
            seeds = (spec.get("cell_seeds") or {}).get(f"{best.row}/{column}",
                                                        spec["columns"][column].get("seeds", spec.get("seeds", [])))
            return Cell(best.grid, best.row, best.column, best.label, best.title, best.overrides, tuple(seeds),
                        best.stages, best.setting)
        template, source = self.following[ref]
        if source not in self.tuned:
            raise ValueError(f"grid {template.grid}: follows {source!r}, which is no tuned cell")
        best = self.choice(source, runs)
        if best is None:
            return None
        return Cell(template.grid, template.row, f"{template.column}_{tag(best.setting)}", template.label,
                    template.title, {**best.overrides, **template.overrides}, template.seeds, template.stages,
                    best.setting)

    def grid_cells(self, grid: str) -> list[Cell]:
        return [c for c in self.cells.values() if c.grid == grid]


    def identity(self, cell: Cell) -> dict[str, Any]:
        """What the cell is: params.yaml's value of every key its runs depend on, the cell's overrides over it."""
        params = {k: cell.overrides.get(k, v) for k, v in self.defaults.items()}
        if self.reads_images(cell):
            return params
        return {k: v for k, v in params.items() if not k.startswith(GENERATOR_SECTIONS)}

    def reads_images(self, cell: Cell) -> bool:
        """Whether the cell's runs train or personalize on synthetic images."""
        return any(cell.overrides.get(k, self.defaults.get(k)) for k in ("train.synthetic", "personalize.synthetic"))

    def run_params(self, cell: Cell) -> dict[str, Any]:
        """Every key a run of ``cell`` sets: each key the grids file sets (the cell's value, else params.yaml's),
        so nothing leaks from the run before, and how it is made (e.g. the split's draw budget)."""
        return {**{k: cell.overrides.get(k, self.defaults[k]) for k in self.keys},
                **{k: v for k, v in cell.overrides.items() if k in RUN_KEYS}}

    def matches(self, run: Run, identity: dict[str, Any]) -> bool:
        """Whether ``run`` is of the cell whose ``identity`` is given. A key a run's params lack (an older
        params.yaml) counts as its value under ``added_keys`` (what the run did before the key existed), else as
        params.yaml's."""
        return all(_same(run.params.get(k, self.added_keys.get(k, self.defaults[k])), v) for k, v in identity.items())

    def runs_of(self, cell: Cell, runs: list[Run]) -> list[Run]:
        """The cell's runs, the newest of each seed, by seed."""
        identity = self.identity(cell)
        by_seed: dict[Any, Run] = {}
        for r in sorted(runs, key=lambda r: r.timestamp):
            if self.matches(r, identity):
                by_seed[r.seed] = r
        return [by_seed[s] for s in sorted(by_seed, key=str)]


def tag(setting: dict[str, Any]) -> str:
    """A candidate's part of a run name: ``{"train.lr": 0.02, "train.fedprox.mu": 0.1}`` -> ``lr0.02_mu0.1``."""
    return "_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in setting.items())


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in setting.items())

def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def load_grids(grids_file: Path, params_file: Path) -> Grids:
    return Grids(yaml.safe_load(grids_file.read_text()) or {},
                 flatten(yaml.safe_load(params_file.read_text()) or {}))


# --- tables ----------------------------------------------------------------------------------------------------

def values(runs: list[Run], metric: str) -> list[float]:
    return [r.metrics[metric] for r in runs if r.metrics.get(metric) is not None and not r.diverged]


def table(grids: Grids, grid: str, runs: list[Run], metric: str | None = None) -> str:
    """Markdown: methods x columns of ``metric``; a grid of one row shows its columns as rows, every metric."""
    spec = grids.grids[grid]
    if "tune" in spec or "follows" in spec:
        return resolved_table(grids, grid, runs, metric or "final")
    cells = grids.grid_cells(grid)
    if len(spec["rows"]) == 1:
        lines = ["| variant (test accuracy, %) | " + " | ".join(s for *_, s in METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
        for c in cells:
            found = grids.runs_of(c, runs)
            lines.append(f"| {c.title} | " + " | ".join(mean_std(values(found, m)) for m in METRICS) + " |")
        return "\n".join(lines)
    columns = list(spec["columns"])
    at = {(c.row, c.column): c for c in cells}
    lines = ["| method | " + " | ".join(str(spec["columns"][col].get("title", col)) for col in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in spec["rows"]:
        shown = [_shown(grids, at.get((row, col)), runs, metric or "final") for col in columns]
        lines.append(f"| {grids.methods[row].get('label', row)} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def resolved_table(grids: Grids, grid: str, runs: list[Run], metric: str) -> str:
    """A tuned or following grid: each cell at the setting its search chose, on the test split, ``mean ± std (n)
    · setting``; a cell still searching shows how many of its candidates have run."""
    spec = grids.grids[grid]
    columns = list(spec["columns"])
    lines = ["| method | " + " | ".join(str(spec["columns"][col].get("title", col)) for col in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in spec["rows"]:
        shown = []
        for col in columns:
            ref = f"{grid}/{row}/{col}"
            if ref not in grids.tuned and ref not in grids.following:
                shown.append("")
                continue
            cell = grids.cell(ref, runs)
            if cell is None:
                source = grids.following[ref][1] if ref in grids.following else ref
                ran = sum(1 for c in grids.tuned[source] if grids.search_run(c, runs))
                shown.append(f"searching ({ran} of {len(grids.tuned[source])})")
                continue
            shown.append(f"{mean_std(values(grids.runs_of(cell, runs), metric))} · {setting_text(cell.setting)}")
        lines.append(f"| {grids.methods[row].get('label', row)} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def search_table(grids: Grids, grid: str, runs: list[Run]) -> str:
    """What a tuned grid chose on: every candidate's validation accuracy (mean of the last five rounds, %) at the
    tune seed, the chosen one in bold."""
    lines = ["| method | column | candidates: validation accuracy, mean of the last five rounds (%) |", "|---|---|---|"]
    spec = grids.grids[grid]
    refs = [f"{grid}/{row}/{col}" for row in spec["rows"] for col in spec["columns"]]
    for ref in [r for r in refs if r in grids.tuned]:  # by method, then column
        cands = grids.tuned[ref]
        best = grids.choice(ref, runs)
        parts = []
        for c in cands:
            run = grids.search_run(c, runs)
            score = "–" if run is None else "diverged" if run.diverged else f"{100 * run.validation:.1f}"
            text = f"{setting_text(c.setting)}: {score}"
            parts.append(f"**{text}**" if best is not None and c.ref == best.ref else text)
        _, row, column = ref.split("/")
        lines.append(f"| {grids.methods[row].get('label', row)} | {column} | " + "; ".join(parts) + " |")
    return "\n".join(lines)


def generator_table(grids: Grids, grid: str, runs: list[Run]) -> str:
    """What each cell's synthetic images are (metrics/generator.json): classifiability, the clients whose adapted
    images are closer to their own than the vanilla ones, the mean Fréchet distance vanilla → adapted; beside them
    the cell's test accuracy. A cell's images are the same at every seed; runs made on different machines may
    differ in the last bits, and then each distinct figure is shown, in seed order. Cells that read no synthetic
    image are left out."""
    spec = grids.grids[grid]
    if "tune" in spec or "follows" in spec:
        raise ValueError(f"grid {grid}: a tuned grid's cells have no generator table")
    one_row = len(spec["rows"]) == 1
    lines = ["| images | classifiability | adapted closer than vanilla | Fréchet distance, vanilla → adapted | "
             f"{METRICS['last5'][2]} (%) |", "|---|---|---|---|---|"]
    for c in [c for c in grids.grid_cells(grid) if grids.reads_images(c)]:
        found = grids.runs_of(c, runs)
        shown = [_image_figures(r.generator) for r in found if r.generator]
        columns = [" / ".join(dict.fromkeys(s[i] for s in shown)) or "–" for i in range(3)]
        if shown and grids.identity(c).get("generate.lora_scale") == 0:
            # no adapter: "adapted" and vanilla are one draw, whose two batchings differ in the last bits only
            columns[1] = "no adapter"
        label = c.title if one_row else f"{c.label}, {c.title}"
        lines.append(f"| {label} | " + " | ".join(columns) + f" | {mean_std(values(found, 'last5'))} |")
    return "\n".join(lines)


# --- differences: a − b with its standard error (regl.differences) ---------------------------------------------

def validation_score(runs: list[Run]) -> float | None:
    """Mean validation accuracy (last five rounds) of the runs that have one; None if none has."""
    v = [r.validation for r in runs if r.validation is not None and not r.diverged]
    return statistics.fmean(v) if v else None


def best_on_validation(grids: Grids, refs: list[str], runs: list[Run]) -> Cell | None:
    """Of the cells ``refs`` (a tuned column's baselines), the one with the best validation score; None while any is
    undecided or unscored. The test split never picks the cell a difference is taken against."""
    scored = []
    for ref in refs:
        cell = grids.cell(ref, runs)
        score = validation_score(grids.runs_of(cell, runs)) if cell else None
        if score is None:
            return None
        scored.append((score, cell))
    return max(scored, key=lambda sc: sc[0])[1]  # the first of equals: the file's order


def by_seed(runs: list[Run], metric: str) -> dict[Any, float]:
    return {r.seed: r.metrics[metric] for r in runs if r.metrics.get(metric) is not None and not r.diverged}


def difference_table(grids: Grids, name: str, runs: list[Run]) -> str:
    """Markdown: each comparison of ``differences.<name>``, a − b on the last round and on the mean of the last
    five rounds."""
    spec = grids.differences[name]
    shown = ("final", "last5")
    lines = ["| comparison | " + " | ".join(f"{METRICS[m][3]}: a − b (points)" for m in shown) + " |",
             "|---|" + "---|" * len(shown)]
    for label, pair in spec["rows"].items():
        a = grids.cell(pair["a"], runs)
        b_refs = pair["b"] if isinstance(pair["b"], list) else [pair["b"]]
        b = best_on_validation(grids, b_refs, runs) if len(b_refs) > 1 else grids.cell(b_refs[0], runs)
        if a is None or b is None:
            lines.append(f"| {label} | " + " | ".join("–" for _ in shown) + " |")
            continue
        title = f"{label}: {a.label} − {b.label}" + (" (the best on validation)" if len(b_refs) > 1 else "")
        a_runs, b_runs = grids.runs_of(a, runs), grids.runs_of(b, runs)
        cells = [difference(by_seed(a_runs, m), by_seed(b_runs, m)) for m in shown]
        lines.append(f"| {title} | " + " | ".join(d.text() if d else "–" for d in cells) + " |")
    return "\n".join(lines)


def _image_figures(g: dict[str, Any]) -> tuple[str, str, str]:
    """Classifiability, "k of n" adapted closer, "vanilla → adapted" Fréchet distance, as the table shows them ("–"
    for a figure the run did not record)."""
    # Before generator_quality took the distance class by class it pooled a client's classes, and the mismatch of a
    # skewed real mixture with balanced synthetic images could decide which set was closer (docs/generator.md)
    how = "" if g.get("frechet") == "per class" else " (pooled)"
    measured = g.get("clients_measured", g.get("clients"))
    classifiability, closer = _number(g.get("classifiability")), _number(g.get("clients_adapted_closer"))
    vanilla, adapted = _number(g.get("frechet_vanilla_mean")), _number(g.get("frechet_adapted_mean"))
    return (f"{classifiability:.3f}" if classifiability is not None else "–",
            f"{closer:.0f} of {measured}{how}" if closer is not None and measured else "–",
            f"{vanilla:.1f} → {adapted:.1f}{how}" if vanilla is not None and adapted is not None else "–")


def _shown(grids: Grids, cell: Cell | None, runs: list[Run], metric: str) -> str:
    """mean ± std (n); blank where the grid has no such cell or plans no seed of it and has no run."""
    found = values(grids.runs_of(cell, runs), metric) if cell else []
    return mean_std(found) if found or (cell and cell.seeds) else ""


def block_title(grids: Grids, grid: str, metric: str | None) -> str:
    what = "" if metric is None else f"{METRICS[metric][2]} (%), "
    return f"{grid}: {what}{grids.grids[grid].get('title', '')}"


def blocks(grids: Grids) -> list[tuple[str, str | None]]:
    """(grid, metric) of every table the grids file makes: a metric each for a grid of several rows."""
    return [(g, None) if len(spec["rows"]) == 1 else (g, m) for g, spec in grids.grids.items()
            for m in ([None] if len(spec["rows"]) == 1 else METRICS)]


def render(grids: Grids, runs: list[Run]) -> str:
    """Every table of the grids file, with its title; a tuned grid's search after its tables."""
    out = [f"{block_title(grids, g, m)}\n\n{table(grids, g, runs, m)}" for g, m in blocks(grids)]
    out += [f"{g}: the synthetic images\n\n{generator_table(grids, g, runs)}" for g, spec in grids.grids.items()
            if "tune" not in spec and "follows" not in spec and any(map(grids.reads_images, grids.grid_cells(g)))]
    out += [f"{g}: the search (validation split)\n\n{search_table(grids, g, runs)}" for g, spec in grids.grids.items()
            if "tune" in spec]
    out += [f"{name}: {spec.get('title', '')}\n\n{difference_table(grids, name, runs)}"
            for name, spec in grids.differences.items()]
    return "\n\n".join(out)


MARKER = re.compile(r"(<!-- regl report: (\S+)(?: (\S+))? -->\n)(.*?)(<!-- end -->)", re.S)


def fill(text: str, grids: Grids, runs: list[Run]) -> str:
    """``text`` with the table under every ``<!-- regl report: GRID [METRIC] -->`` marker made anew (up to its
    ``<!-- end -->``); METRIC ``search`` is a tuned grid's search, ``generator`` a grid's synthetic images;
    ``<!-- regl report: NAME difference -->`` is the table of ``differences.NAME``."""
    def one(m: re.Match) -> str:
        grid, metric = m.group(2), m.group(3)
        if metric == "difference":
            if grid not in grids.differences:
                raise ValueError(f"marker {m.group(1).strip()}: no differences {grid!r} in the grids file")
            return f"{m.group(1)}{difference_table(grids, grid, runs)}\n{m.group(5)}"
        search = metric == "search" and grid in grids.grids and "tune" in grids.grids[grid]
        images = metric == "generator" and grid in grids.grids
        if grid not in grids.grids or (metric is not None and metric not in METRICS and not search and not images):
            raise ValueError(f"marker {m.group(1).strip()}: no grid {grid!r} or metric {metric!r}")
        made = (search_table(grids, grid, runs) if search else generator_table(grids, grid, runs) if images
                else table(grids, grid, runs, metric))
        return f"{m.group(1)}{made}\n{m.group(5)}"
    return MARKER.sub(one, text)


# --- figures ---------------------------------------------------------------------------------------------------

def figure_points(grids: Grids, runs: list[Run], refs: dict[Any, str], metric: str) -> list[tuple[Any, float, float]]:
    """(key, mean %, std %) of every ref with at least one run; the std is 0 for a single run."""
    out = []
    for key, ref in refs.items():
        cell = grids.cell(ref, runs)
        v = values(grids.runs_of(cell, runs), metric) if cell else []
        if v:
            out.append((key, 100 * statistics.fmean(v), 100 * statistics.stdev(v) if len(v) > 1 else 0.0))
    return out


def draw_curves(ax: Any, grids: Grids, runs: list[Run], refs: dict[str, str]) -> None:
    """Test accuracy by round of each ref's runs: the mean over seeds, the band one std either side."""
    for i, (label, ref) in enumerate(refs.items()):
        cell = grids.cell(ref, runs)
        curves = [r.curve for r in grids.runs_of(cell, runs) if r.curve and not r.diverged] if cell else []
        if not curves:
            continue
        rounds = min(len(c) for c in curves)
        by_round = [[100 * c[k] for c in curves] for k in range(rounds)]
        mean = [statistics.fmean(v) for v in by_round]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in by_round]
        xs = range(1, rounds + 1)
        ax.plot(xs, mean, color=f"C{i}", label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        ax.fill_between(xs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                        color=f"C{i}", alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    if ax.has_data():
        ax.legend(fontsize=8)


def draw_figures(grids: Grids, runs: list[Run], folder: Path) -> list[Path]:
    """One PNG per figure of the grids file, its panels side by side; the same runs give the same bytes."""
    from regl.evaluation.plots import plt, save_figure

    written = []
    for name, spec in grids.figures.items():
        metric = spec.get("metric", "last5")
        panels = spec["panels"]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            if "bars" in panel:
                pts = figure_points(grids, runs, panel["bars"], metric)
                ax.bar(range(len(pts)), [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=4,
                       color=[f"C{i}" for i in range(len(pts))])
                ax.set_xticks(range(len(pts)), [p[0] for p in pts])
                for i, p in enumerate(pts):
                    ax.text(i, p[1] + p[2] + 1, f"{p[1]:.1f}", ha="center", va="bottom", fontsize=9)
            elif "curves" in panel:
                draw_curves(ax, grids, runs, panel["curves"])
            else:
                for label, refs in panel["lines"].items():
                    pts = figure_points(grids, runs, refs, metric)
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                                capsize=3, label=label)
                ax.set_xlabel(panel.get("x", ""))
                ax.legend(fontsize=8)
            ax.set_ylim(0, 100)
            if "curves" not in panel:
                ax.set_ylabel(f"test accuracy (%), {'mean of the last five rounds' if metric == 'last5' else metric}")
            ax.set_title(panel.get("title", ""))
            ax.grid(axis="y", alpha=0.3)
        if not any(ax.has_data() for ax in axes[0]):  # nothing run yet: no empty chart
            plt.close(fig)
            continue
        path = folder / f"{name}.png"
        folder.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path)
        written.append(path)
    return written
