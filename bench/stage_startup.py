"""Benchmark: how long a per-client generator stage takes from process start to its first step.

Runs `finetune_lora` and `generate` for one client as DVC would (a fresh `python stages/<stage>.py` process)
with the work cut to one step (finetune.steps = 1; generate.images_per_class = 1, generate.steps = 1), writing
into a scratch folder, so the wall time is start-up (imports, loading the generator and the client's shard) plus
one step and the writes: an upper bound on the time to the first step. Then, per stage, the seconds its imports
take, by top-level package (`python -X importtime`, cumulative, first importer wins).

Needs `dvc repro finetune_lora@0` first (models/generator, models/lora/client_0, data/clients).

    python bench/stage_startup.py [--client 0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def one_step_params(folder: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"].update(steps=1)
    params["generate"].update(images_per_class=1, steps=1)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def commands(client: int, params: Path, out: Path) -> dict[str, list[str]]:
    return {
        "finetune_lora": [sys.executable, str(ROOT / "stages/finetune_lora.py"), "--client", str(client),
                          "--params", str(params), "--out", str(out / "lora")],
        "generate": [sys.executable, str(ROOT / "stages/generate.py"), "--client", str(client), "--params",
                     str(params), "--out", str(out / "synthetic"), "--vanilla-out", str(out / "vanilla"),
                     "--grids", str(out / "grids")],
    }


def import_seconds(cmd: list[str]) -> dict[str, float]:
    """Cumulative import time of each top-level package the process imports first-hand or through others."""
    result = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:], "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    per_package: dict[str, float] = defaultdict(float)
    for line in result.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) == 1:  # a top-level import of the stage's own process
            per_package[m.group(3).split(".")[0]] += int(m.group(1)) / 1e6
    return dict(sorted(per_package.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="regl-startup-") as tmp:
        folder = Path(tmp)
        params = one_step_params(folder)
        cmds = commands(args.client, params, folder)
        # generate reads the adapter finetune_lora wrote: run finetune_lora first in each round
        cmds["generate"] += ["--lora", str(folder / "lora")]
        for stage, cmd in cmds.items():
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
                times.append(time.perf_counter() - start)
            imports = import_seconds(cmd)
            top = ", ".join(f"{name} {secs:.2f}" for name, secs in list(imports.items())[:6])
            print(f"{stage:14s} one-step run {statistics.median(times):5.2f} s (median of {args.repeat}: "
                  f"{', '.join(f'{t:.2f}' for t in times)}); imports {sum(imports.values()):.2f} s: {top}",
                  flush=True)


if __name__ == "__main__":
    main()
