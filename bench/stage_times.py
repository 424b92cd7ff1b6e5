"""Benchmark: the main job's stages, run one after another in dvc.yaml's order without DVC, each timed; then,
optionally, more federated_train runs with params overridden (a FedAvg run beside the ReGL one, another seed).

For a machine where dvc is not installed - a lent GPU, say - and for the cost of the grid there: what the clients'
generator stages cost, what one run of each kind costs. Each stage is its own process, as under `dvc repro`, so
the times include each stage's start-up (imports, CUDA set-up). The JSON summary is rewritten after every stage,
so a run cut short keeps what it did.

    python bench/stage_times.py --out bench/results/stage_times.json
    python bench/stage_times.py --extra fedavg=train.synthetic=false,personalize.synthetic=false --extra s1=train.seed=1
    python bench/stage_times.py --only federated_train personalize --extra ...   # stages already run

An --extra run rewrites params.yaml with its overrides for the length of the run and puts the file back (bytes
and all) afterwards; it reruns federated_train and what follows it in --extra-stages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def set_key(d: dict, dotted: str, value: str) -> None:
    """One dotted-key override (``train.seed``, value as YAML) into a params mapping; archive/baselines_bench.py
    uses it too."""
    *path, last = dotted.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = yaml.safe_load(value)


def pipeline_commands(dvc_yaml: Path) -> list[tuple[str, str]]:
    """(stage name, command) in dvc.yaml's order."""
    return [(name, stage["cmd"]) for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items()]


def run_stage(name: str, cmd: str, log: Path) -> dict:
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n== {name}: {cmd}\n")
        f.flush()
        rc = subprocess.run(cmd, shell=True, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = round(time.perf_counter() - start, 1)
    print(f"{name}: {seconds} s" + ("" if rc == 0 else f" (exit {rc})"), flush=True)
    row = {"stage": name, "seconds": seconds, "rc": rc}
    if name.endswith("federated_train") and rc == 0:  # the run's result, so its time belongs to a real run
        train = json.loads((REPO / "metrics/train.json").read_text())
        row.update({k: train[k] for k in ("algorithm", "synthetic", "accuracy", "accuracy_mean_last_5")})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None,
                    help="only these stages (dvc.yaml's order kept)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE...]")
    ap.add_argument("--extra-stages", nargs="+", default=["federated_train"])
    ap.add_argument("--deadline", type=float, default=None, help="seconds after which no new stage starts")
    ap.add_argument("--log", type=Path, default=Path("stage_times.log"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/stage_times.json"))
    args = ap.parse_args()

    params_file = REPO / "params.yaml"
    original = params_file.read_bytes()
    params = yaml.safe_load(original)
    stages = [(n, c) for n, c in pipeline_commands(REPO / "dvc.yaml")
              if args.only is None or n in args.only]
    t0 = time.perf_counter()
    summary = {
        "machine": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": params.get("threads"), "stages": [], "extra": {},
    }

    def save() -> None:
        summary["total_seconds"] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")

    def late() -> bool:
        return args.deadline is not None and time.perf_counter() - t0 > args.deadline

    for name, cmd in stages:
        if late():
            summary["cut_short"] = f"deadline {args.deadline} s reached before {name}"
            break
        summary["stages"].append(run_stage(name, cmd, args.log))
        save()

    commands = dict(pipeline_commands(REPO / "dvc.yaml"))
    try:
        for spec in args.extra:
            run_name, _, overrides = spec.partition("=")
            changed = yaml.safe_load(original)
            for pair in overrides.split(","):
                key, _, value = pair.partition("=")
                set_key(changed, key, value)
            params_file.write_text(yaml.safe_dump(changed, sort_keys=False))
            summary["extra"][run_name] = {"overrides": overrides, "stages": []}
            for name in args.extra_stages:
                if late():
                    summary["cut_short"] = f"deadline {args.deadline} s reached before {run_name} {name}"
                    break
                summary["extra"][run_name]["stages"].append(run_stage(f"{run_name} {name}", commands[name], args.log))
                save()
    finally:
        params_file.write_bytes(original)
    save()
    sys.exit(1 if any(s["rc"] for s in summary["stages"]) else 0)


if __name__ == "__main__":
    main()
