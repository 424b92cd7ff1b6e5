"""Benchmark: how long a generator stage (finetune_lora, generate) takes from process start to its first step.

Runs `finetune_lora` and `generate` for one client as DVC would (a fresh `python stages/<stage>.py` process)
with the work cut to one step (finetune.steps = 1; generate.images_per_class = 1, generate.steps = 1), writing
into a scratch folder, so the wall time is start-up (imports, loading the generator and the client's shard) plus
one step and the writes: an upper bound on the time to the first step. Beside them, the floor no stage can go
under while it uses diffusers: a bare process importing torch, one importing only the classes a stage uses
(each from its own module), and one importing what the stages import (diffusers' StableDiffusionPipeline and
peft), measured in the same run. Then, per stage, the seconds its
imports take, by package (`python -X importtime`, cumulative, the packages regl's modules import first-hand).

Needs `dvc repro partition pretrain_generator` first (models/generator, data/clients); the adapter it makes itself.

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


FLOOR = {
    "python + torch": "import torch",
    # the classes a stage uses, each from its own module, not through diffusers' and transformers' package roots
    "python + only the modules used": (
        "from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL; "
        "from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel; "
        "from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler; "
        "from transformers.models.clip.modeling_clip import CLIPTextModel; "
        "from transformers.models.clip.tokenization_clip import CLIPTokenizer; from peft import LoraConfig"),
    "python + diffusers pipeline + peft": "from diffusers import StableDiffusionPipeline; import peft",
}


def import_seconds(cmd: list[str]) -> dict[str, float]:
    """Cumulative import time of each package a module of the stage's own (the script or regl) imports
    first-hand; a package first imported by another package counts under that one."""
    result = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:], "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    lines = [(len(m.group(2)), m.group(3), int(m.group(1)) / 1e6) for line in result.stderr.splitlines()
             if (m := re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line))]
    per_package: dict[str, float] = defaultdict(float)
    parents: list[tuple[int, str]] = []  # importtime prints a module after its imports: read it backwards
    for depth, name, seconds in reversed(lines):
        while parents and parents[-1][0] >= depth:
            parents.pop()
        importer = parents[-1][1].split(".")[0] if parents else "regl"  # depth 1: the script itself
        top = name.split(".")[0]
        if importer == "regl" and top != "regl":
            per_package[top] += seconds
        parents.append((depth, name))
    return dict(sorted(per_package.items(), key=lambda kv: -kv[1]))


def wall_seconds(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return times


def show(label: str, times: list[float]) -> str:
    return (f"{label:36s} {statistics.median(times):5.2f} s (median of {len(times)}: "
            f"{', '.join(f'{t:.2f}' for t in times)})")


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
        for label, code in FLOOR.items():
            print(show(f"floor: {label}", wall_seconds([sys.executable, "-c", code], args.repeat)), flush=True)
        for stage, cmd in cmds.items():
            times = wall_seconds(cmd, args.repeat)
            imports = import_seconds(cmd)
            top = ", ".join(f"{name} {secs:.2f}" for name, secs in list(imports.items())[:8])
            print(f"{show(f'{stage}: one-step run', times)}; imports {sum(imports.values()):.2f} s: {top}",
                  flush=True)


if __name__ == "__main__":
    main()
