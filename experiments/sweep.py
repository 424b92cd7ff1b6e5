"""Run (or queue) a grid of regl experiments over seeds, as DVC experiments, and export the results.

    python experiments/sweep.py headline --seeds 0 1 2                  # run now, one after another
    python experiments/sweep.py table1 --seeds 0 1 2 --workers 2 --queue # queue; then: dvc queue start -j 2
    regl report                                                         # mean ± std (n) per cell

A cell is a set of `-S` overrides (a method, a skew, a number of clients...); a run is a cell at one seed.
The seed is `train.seed` and `personalize.seed` (model init, client sampling, batch order); the partition and
the generator stay fixed within a cell: they are the cell's data (vary `partition.seed`, `generator.seed`,
`finetune.seed` or `generate.seed` as cells of their own to measure that spread too). So only the training
stages rerun per seed; DVC takes every other stage from its cache.

Every run names every key a grid varies, so nothing leaks from the run before (`dvc exp run` leaves its params in
the workspace). Each run gets `threads = cores // workers`: N experiments side by side, each at full thread count,
spin-wait on shared cores. A run whose name exists already is skipped, so a sweep cut short resumes. With
`--export FILE`, `dvc exp show --json` of every commit the runs were made from is merged into FILE after every
finished run (commit it as you go); the runs FILE holds already are kept and skipped, so a fresh clone extends
the committed export rather than replacing or rerunning it. A run that fails (a diverged run stops with an
error) is reported and the sweep goes on; it exits 1 at the end.

`--set KEY=VALUE` changes one of the keys above for every cell, e.g. a per-method learning rate:

    python experiments/sweep.py table1 --cells moon-b0.01-e2 --set train.lr=0.02   # runs moon-b0.01-e2-lr0.02-s0..
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BASELINES = ["fedavg", "fedprox", "scaffold", "fednova", "fedadam", "moon"]

# Every key any grid varies, at the value params.yaml ships with; a run overrides some of them.
DEFAULTS = {
    "beta": "0.01",
    "clients": "[0,1,2,3,4,5,6,7,8,9]",
    "partition.scheme": "dirichlet",
    "partition.classes_per_client": "2",
    "partition.max_tries": "1000",
    "train.algorithm": "fedavg",
    "train.synthetic": "true",
    "personalize.synthetic": "true",
    "train.local_epochs": "2",
    "train.lr": "0.05",
    "train.weighting": "real",
    "generate.lora_scale": "0.8",
    "generate.images_per_class": "40",
    "generate.oracle": "false",
}


def method(algorithm: str, synthetic: bool) -> dict[str, str]:
    s = "true" if synthetic else "false"
    return {"train.algorithm": algorithm, "train.synthetic": s, "personalize.synthetic": s}


def regl() -> dict[str, str]:
    return method("fedavg", True)


def methods() -> dict[str, dict[str, str]]:
    """The paper's comparison: every baseline on real images only, and ReGL (FedAvg + synthetic images)."""
    return {**{alg: method(alg, False) for alg in BASELINES}, "regl": regl()}


def clients(m: int) -> str:
    return "[" + ",".join(str(i) for i in range(m)) + "]"


def grid(name: str) -> dict[str, dict[str, str]]:
    """Cell name -> overrides, for each grid this script knows."""
    iid = {"partition.scheme": "iid", **method("fedavg", False)}
    if name == "headline":  # the README's first table: ReGL vs FedAvg vs the IID reference, default recipe
        return {"fedavg-b0.01": method("fedavg", False), "regl-b0.01": regl(), "iid-fedavg": iid}
    if name in ("table1", "table1-e5"):
        e = "5" if name == "table1-e5" else "2"
        cells = {f"{m}-b{b}-e{e}": {**o, "beta": b, "train.local_epochs": e}
                 for b in ("0.01", "0.5") for m, o in methods().items()}
        return {**cells, f"iid-fedavg-e{e}": {**iid, "train.local_epochs": e}}
    if name == "table2":
        # At beta 0.01 over 10 classes each class lands on about one client: a split giving 20 clients 10 images
        # each is a rare draw (the 18,026th at partition.seed 0, hence the budget; it decides whether a split is
        # found, never which), 50 clients are out of reach (at most 35 of 50 got 10 images in 2,000 draws).
        return {f"{m}-m{n}": {**o, "clients": clients(n), "partition.max_tries": "100000"}
                for n in (5, 10, 20) for m, o in methods().items()}
    if name == "table2-one-class":  # more clients than the Dirichlet split reaches: one class a client
        one_class = {"partition.scheme": "pathological", "partition.classes_per_client": "1"}
        return {f"{m}-one-class-m{n}": {**o, **one_class, "clients": clients(n)}
                for n in (10, 20, 50, 100) for m, o in methods().items()}
    if name == "ablations":
        return {
            "regl-base-model": {**regl(), "generate.lora_scale": "0"},
            "regl-oracle": {**regl(), "generate.oracle": "true"},
            "regl-weighting-samples": {**regl(), "train.weighting": "samples"},
            "regl-weighting-uniform": {**regl(), "train.weighting": "uniform"},
            "regl-ipc120": {**regl(), "generate.images_per_class": "120"},
            "regl-ipc400": {**regl(), "generate.images_per_class": "400"},
        }
    raise SystemExit(f"error: unknown grid {name!r}; known: headline, table1, table1-e5, table2, table2-one-class, "
                     "ablations")


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items; only the keys every run names, so that none leaks into the runs after."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"error: --set {item!r}: want KEY=VALUE with KEY one of {', '.join(DEFAULTS)}")
        extra[key] = value
    return extra


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
    if path.exists():
        data = merge_exports(json.loads(path.read_text()), data)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


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


def exported_names(path: Path | None) -> set[str]:
    """The names of the finished runs an export file holds: a sweep resumed in a fresh clone skips them."""
    if not path or not path.exists():
        return set()
    return {exp.get("name") for entry in json.loads(path.read_text()) for exp in entry.get("experiments") or []
            if (exp.get("executor") or {}).get("state") != "failed"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="headline | table1 | table1-e5 | table2 | table2-one-class | ablations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cells", nargs="*", help="only these cells of the grid (default: all)")
    ap.add_argument("--workers", type=int, default=1, help="experiments that will run side by side")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores the workers share")
    ap.add_argument("--queue", action="store_true", help="queue the runs (dvc queue start -j WORKERS)")
    ap.add_argument("--stages", nargs="*", help="run only these stages, without checking upstream ones "
                    "(dvc exp run -s): for when the generator stages are cached as they are")
    ap.add_argument("--export", type=Path,
                    help="write `dvc exp show --json` (every commit's runs) here after every run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override for every cell; KEY one of {', '.join(DEFAULTS)}")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    extra = parse_sets(args.set)
    suffix = "".join(f"-{key.rsplit('.', 1)[-1].replace('_', '')}{value}" for key, value in extra.items())

    cells = grid(args.grid)
    unknown = set(args.cells or []) - set(cells)
    if unknown:
        raise SystemExit(f"error: no cell {sorted(unknown)} in grid {args.grid}; cells: {', '.join(cells)}")
    threads = max(1, args.cores // args.workers)
    done = set() if args.dry_run else existing_names() | exported_names(args.export)
    failed: list[str] = []
    for seed in args.seeds:  # seeds outermost: every cell has one run before any has three
        for cell, overrides in cells.items():
            if args.cells and cell not in args.cells:
                continue
            name = f"{cell}{suffix}-s{seed}"
            if name in done:
                print(f"skip {name}: ran already", flush=True)
                continue
            values = {**DEFAULTS, **overrides, **extra, "train.seed": str(seed), "personalize.seed": str(seed),
                      "threads": str(threads)}
            cmd = ["dvc", "exp", "run", "-n", name] + (["--queue"] if args.queue else [])
            cmd += [arg for key, value in values.items() for arg in ("-S", f"{key}={value}")]
            if args.stages:
                cmd += ["-s", *args.stages]
            print(" ".join(cmd), flush=True)
            if args.dry_run:
                continue
            if subprocess.run(cmd).returncode != 0:
                failed.append(name)
                print(f"run {name} failed (its error is above); going on with the next", flush=True)
            if args.export and not args.queue:
                export(args.export)
    if args.queue and not args.dry_run:
        print(f"queued; start with: dvc queue start -j {args.workers}; then: regl report", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    sys.exit(main())
