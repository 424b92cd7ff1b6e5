"""Run (or queue) the cells of experiments/grids.yaml that the export lacks, as DVC experiments, and export them.

    python experiments/sweep.py --export experiments/results/grid.json          # every grid: reruns nothing done
    python experiments/sweep.py table2 --cells regl-m20 --export experiments/results/grid.json
    python experiments/sweep.py table1 --workers 2 --queue                       # then: dvc queue start -j 2
    regl report --json experiments/results/grid.json                             # the tables

A cell is a set of `-S` overrides over params.yaml (grids.yaml says which); a run is a cell at one seed, named
``<grid>-<row>-<column>-s<seed>``. A run is done when the export holds a finished run with the cell's params at
that seed, whatever its name (or this clone's DVC a run of its name), so a cut-short sweep resumes and a fresh
clone extends the committed export rather than rerunning it; a run made under another params.yaml (a changed
default the cell's runs read) is not done. Every run sets every key the grids file sets anywhere, so nothing
leaks from the run before (`dvc exp run` leaves its params in the workspace), and gets `threads = cores //
workers`: N experiments side by side, each at full thread count, spin-wait on shared cores. With `--export FILE`,
`dvc exp show --json` of every commit the runs were made from is merged into FILE after every finished run
(commit it as you go). A run that fails (a diverged run stops with an error) is reported and the sweep goes on;
it exits 1 at the end. A tuned grid's cell (docs/experiments.md, "Tuning on the validation split") runs its search
first, then, in the same sweep, the setting its validation accuracy chose at the grid's seeds; a search run that
diverged is recorded in the export as such, its search's worst setting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from regl.report import Cell, Grids, flatten, read_runs, unflatten  # noqa: E402


def committed_params(path: Path) -> dict:
    """params.yaml as committed (git HEAD), not as the workspace holds it: `dvc exp run -S` leaves each run's params
    in the workspace, so a sweep reading the file there would take the last run's values (its lr, its SCAFFOLD
    server lr) for params.yaml's in the next runs. A file git does not track is read as it is."""
    git = subprocess.Popen(["git", "show", f"HEAD:./{path.name}"], cwd=path.resolve().parent, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    shown = git.communicate()[0]
    return yaml.safe_load(shown if git.returncode == 0 else path.read_text()) or {}


BARE = re.compile(r"[A-Za-z_][\w.\-/]*")  # a string Hydra's override grammar reads as itself, unquoted


def value_arg(value) -> str:
    """A param value as `-S KEY=VALUE` wants it: true/false, [0,1], 0.01, fedavg. DVC reads it with Hydra's override
    grammar, where a bare string holds no space, comma (a sweep), brace (a dict) or quote: any other string goes in
    single quotes, a quote in it and the backslashes before a quote or the closing one escaped."""
    if not isinstance(value, str):
        return json.dumps(value, separators=(",", ":"))
    if BARE.fullmatch(value):
        return value
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{escaped}'"


def experiments_by_baseline() -> dict[str, set[str]]:
    """Every experiment's name under the commit it was made from (`dvc exp ls -A`): a sweep clone that moves to
    a newer commit between runs keeps seeing, and exporting, the runs made before."""
    out = subprocess.run(["dvc", "exp", "ls", "-A"], capture_output=True, text=True, check=True).stdout
    return parse_exp_ls(out)


def parse_exp_ls(out: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    baseline = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            baseline = line.rstrip()[:-1]
            found[baseline] = set()
        elif line.strip() and baseline is not None:
            name = line.strip()
            found[baseline].add(name[name.index("[") + 1:name.rindex("]")] if "[" in name else name.split()[-1])
    return found


def existing_names() -> set[str]:
    return set().union(*experiments_by_baseline().values())


def export(path: Path) -> None:
    """`dvc exp show --json` of every baseline commit that has experiments (plain `dvc exp show` shows only
    those of HEAD), merged into what ``path`` holds already."""
    revs = [arg for rev in sorted(experiments_by_baseline()) for arg in ("--rev", rev)]
    data = json.loads(subprocess.run(["dvc", "exp", "show", "--json", *revs], capture_output=True, text=True,
                                     check=True).stdout)
    data = with_curves(data)
    if path.exists():
        data = merge_exports(json.loads(path.read_text()), data)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def with_curves(data: list[dict]) -> list[dict]:
    """`dvc exp show --json` leaves lists out of a run's metrics, and with them train.json's per-round curve
    (``by_round``), which the report's curve figures draw: each run's curve is read back from its own commit."""
    for entry in data:
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                for name, record in ((rev.get("data") or {}).get("metrics") or {}).items():
                    train = record.get("data") if isinstance(record, dict) else None
                    if not name.endswith("train.json") or train is None or "by_round" in train:
                        continue
                    shown = subprocess.run(["git", "show", f"{rev['rev']}:{name}"], capture_output=True, text=True)
                    if shown.returncode == 0 and (curve := json.loads(shown.stdout).get("by_round")):
                        train["by_round"] = curve
    return data


def merge_exports(old: list[dict], new: list[dict]) -> list[dict]:
    """``new`` over ``old`` (both `dvc exp show --json`): the runs ``old`` holds and ``new`` lacks are kept, so a
    sweep in a fresh clone, whose DVC knows none of the committed runs, adds to the committed export instead of
    replacing it. A run in both (same commit, same name) is taken from ``new``."""
    fresh = {entry.get("rev"): entry for entry in new}
    merged = []
    for entry in old:
        rev = entry.get("rev")
        if rev not in fresh:
            merged.append(entry)
            continue
        update = fresh.pop(rev)
        names = {exp.get("name") for exp in update.get("experiments") or []}
        kept = [exp for exp in entry.get("experiments") or [] if exp.get("name") not in names]
        runs = (update.get("experiments") or []) + kept
        merged.append({**update, "experiments": runs or update.get("experiments")})
    return merged + [entry for entry in new if entry.get("rev") in fresh]


def done_seeds(grids: Grids, cell: Cell, exported: list, names: set[str]) -> set[int]:
    """The seeds of ``cell`` that ran: finished runs with the cell's params in the export, or runs of the cell's
    name in this clone's DVC."""
    runs = grids.runs_of(cell, exported)
    if cell.setting is not None:  # a tuned cell's search run counts only with its validation figure, or diverged
        runs = [r for r in runs if r.seed != grids.tune_seed(cell) or r.validation is not None or r.diverged]
    return {r.seed for r in runs} | {s for s in cell.seeds if run_name(cell, s) in names}


def run_name(cell: Cell, seed: int) -> str:
    return f"{cell.grid}-{cell.name}-s{seed}"


def exported_names(path: Path | None) -> set[str]:
    """The names of the finished runs an export file holds (a diverged run finished: it is done, not redone)."""
    if not path or not path.exists():
        return set()
    return {exp.get("name") for entry in json.loads(path.read_text()) for exp in entry.get("experiments") or []
            if (exp.get("executor") or {}).get("state") != "failed"}


def plan(grids: Grids, cells: list[Cell], exported: list, names: set[str], seeds: list[int] | None,
         named: bool) -> tuple[list[tuple[int, Cell]], int]:
    """The runs still to make (seed, cell), seeds outermost so that every cell has one run first; and how many of
    the cells' runs are done. ``seeds`` replaces the cells' own (a cell planning none runs only when ``named``)."""
    todo, done, seen = [], 0, set()
    for cell in cells:
        ran = done_seeds(grids, cell, exported, names)
        planned = cell.seeds or (() if not named else seeds or ())
        for seed in (seeds or cell.seeds) if planned else ():
            key = (tuple(sorted((k, repr(v)) for k, v in grids.identity(cell).items())), seed)
            if key in seen:  # the same cell in another grid, or a tuned cell's choice and its search run
                continue
            seen.add(key)
            if seed in ran:
                done += 1
            else:
                todo.append((seed, cell))
    return sorted(todo, key=lambda sc: sc[0]), done


# the line federated_train stops a diverged run with (regl.federated.train.divergence_error)
DIVERGED = re.compile(r"error: (round \d+: the global model's test loss is [^\n]*diverged[^\n]*)")


def launch(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd``, its stderr passed through as it comes (progress bars included); (exit code, stderr's tail)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    tail = b""
    for chunk in iter(lambda: proc.stderr.read1(65536), b""):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail = (tail + chunk)[-65536:]
    return proc.wait(), tail.decode(errors="replace")


def run(grids: Grids, cell: Cell, seed: int, threads: int, queue: bool, dry_run: bool,
        export_file: Path | None = None) -> bool:
    """One `dvc exp run` of ``cell`` at ``seed`` (printed; queued with ``queue``); whether it succeeded. A run of a
    tuned cell's search that diverged is recorded in ``export_file`` as diverged: a search counts it as its worst
    setting, and no sweep runs it again."""
    name = run_name(cell, seed)
    values = {**grids.run_params(cell), "train.seed": seed, "personalize.seed": seed, "threads": threads}
    cmd = ["dvc", "exp", "run", "-n", name] + (["--queue"] if queue else [])
    cmd += [arg for key, value in values.items() for arg in ("-S", f"{key}={value_arg(value)}")]
    if cell.stages:
        cmd += ["-s", *cell.stages]
    print(" ".join(cmd), flush=True)
    if dry_run:
        return True
    code, stderr = launch(cmd)
    if code == 0:
        return True
    diverged = DIVERGED.search(stderr)
    if diverged and export_file is not None and cell.setting is not None and seed == grids.tune_seed(cell):
        record_diverged(export_file, name, values, diverged.group(1))
        print(f"run {name} diverged: recorded in {export_file} as its search's worst setting", flush=True)
        return False
    print(f"run {name} failed (its error is above); going on with the next", flush=True)
    return False


def record_diverged(path: Path, name: str, values: dict, error: str) -> None:
    """Add to the export a finished-looking record of a run that stopped diverged: its params and train.json's
    ``diverged`` (the error), which `regl report` reads as a run that diverged."""
    data = {"rev": name, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "params": {"params.yaml": {"data": unflatten(values)}},
            "metrics": {"metrics/train.json": {"data": {"diverged": error}}}}
    entry = {"rev": "diverged", "name": "runs that stopped diverged (experiments/sweep.py)", "data": {},
             "experiments": [{"name": name, "executor": None, "revs": [{"rev": name, "name": name, "data": data}]}]}
    old = json.loads(path.read_text()) if path.exists() else []
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(merge_exports(old, [entry])) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", nargs="*", help="grids of the grids file to run (default: every grid)")
    ap.add_argument("--grids", type=Path, default=ROOT / "experiments" / "grids.yaml")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--cells", nargs="*", help="only these cells (<row>-<column>, e.g. regl-m20)")
    ap.add_argument("--seeds", type=int, nargs="+", help="these seeds instead of the cells' own (a cell the grids "
                    "file plans no seed of runs only when --cells names it)")
    ap.add_argument("--workers", type=int, default=1, help="experiments that will run side by side")
    ap.add_argument("--cores", type=int, help="cores the workers share (default: params.yaml's threads, so that a "
                    "run reuses the cached stages made at that thread count)")
    ap.add_argument("--queue", action="store_true", help="queue the runs (dvc queue start -j WORKERS)")
    ap.add_argument("--export", type=Path,
                    help="write `dvc exp show --json` (every commit's runs) here after every run")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    grids = Grids(yaml.safe_load(args.grids.read_text()) or {}, flatten(committed_params(args.params)))
    unknown = set(args.grid) - set(grids.grids)
    if unknown:
        raise SystemExit(f"error: no grid {sorted(unknown)} in {args.grids}; grids: {', '.join(grids.grids)}")

    def chosen(c: Cell) -> bool:
        # a tuned cell's candidates and its choice answer to its ROW-COLUMN as well as to their own names
        names = {c.name, f"{c.row}-{c.column.split('_')[0]}"}
        return (not args.grid or c.grid in args.grid) and (not args.cells or bool(names & set(args.cells)))

    following = [template for template, _ in grids.following.values()]  # their setting waits for a search
    if args.cells and not [c for c in [*grids.cells.values(), *following] if chosen(c)]:
        raise SystemExit(f"error: no cell {args.cells} in grid(s) {args.grid or 'any'}")
    cores = args.cores or int(committed_params(args.params).get("threads", 1))
    threads = max(1, cores // args.workers)
    # A committed run counts by its params only: one of the cell's name made under an older params.yaml (another
    # pre-training recipe) is not the cell's run any more. A name in this clone's DVC counts (queued or running).
    names = set() if args.dry_run else existing_names()
    failed: list[str] = []
    tried: set[str] = set()
    while True:  # again once a tuned cell's search has run: its choice runs at the grid's seeds
        exported = read_runs(json.loads(args.export.read_text()), diverged=True)[0] \
            if args.export and args.export.exists() else []
        # fixed cells, tuned cells' choices, and the cells of a grid that follows a tuned one (e.g. `long`)
        cells = [c for c in [*grids.cells.values(), *grids.resolved_cells(exported)] if chosen(c)]
        todo, done = plan(grids, cells, exported, names, args.seeds, bool(args.cells))
        todo = [(seed, cell) for seed, cell in todo if run_name(cell, seed) not in tried]
        if not tried:
            print(f"{done} run(s) done, {len(todo)} to run", flush=True)
        if not todo or args.dry_run or args.queue:
            break
        for seed, cell in todo:
            tried.add(run_name(cell, seed))
            if not run(grids, cell, seed, threads, args.queue, args.dry_run, args.export):
                failed.append(run_name(cell, seed))
            if args.export:
                export(args.export)
        if not args.export:
            break
    if args.dry_run or args.queue:
        for seed, cell in todo:
            run(grids, cell, seed, threads, args.queue, args.dry_run)
    if args.export and not todo and not args.dry_run and names - exported_names(args.export):
        export(args.export)  # runs queued earlier have finished since: collect them
    if args.queue and todo and not args.dry_run:
        print(f"queued; start with: dvc queue start -j {args.workers}; then: regl report", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    sys.exit(main())
