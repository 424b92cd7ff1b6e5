"""Milliseconds of the work whose layout regl chooses on a CPU: generation with a client's adapter
(applied at every step, or merged into the U-Net's weights; contiguous or channels-last) and the classifier stages'
cnn (a training step and a scoring batch; contiguous or channels-last).

Generation: tiny-sd at params.yaml's sizes on random weights with a LoRA of params.yaml's `finetune` recipe, one
call of the pipeline over `generate.batch_size` images at `generate.steps` DPM-Solver++ steps and classifier-free
guidance; stage generate samples merged and channels-last (regl.generator.lora.load_lora, regl.generator.sample).
The cnn: a step of SGD at `train.batch_size`, and a forward pass over `compute.scoring_batch` images, 32 px grey;
on a CPU the stages run it contiguous unless `compute.channels_last: true`. The variants alternate, so all see the same
machine; each figure is the median over ``--repeat`` timed calls after a warm-up.

    python bench/layout_bench.py [--repeat 7] [--out bench/results/layout.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.federated.train_params import TrainParams
from regl.generator import tinysd
from regl.generator.lora import FinetuneParams, add_lora
from regl.generator.pretrain import GeneratorParams, vocabulary_corpus
from regl.generator.sample import GenerateParams, set_scheduler
from regl.training.compute import ComputeParams
from regl.training.models import build_model

SIZE, CHANNELS = 32, 1  # the embedded default's images
CLASSES = [f"class {k}" for k in range(10)]


def sampler(cfg: GeneratorParams, lora: FinetuneParams, g: GenerateParams, merged: bool,
            channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    tokenizer = tinysd.build_tokenizer(vocabulary_corpus(CLASSES))
    pipe = tinysd.assemble(tinysd.build_vae(CHANNELS, SIZE), tinysd.build_text_encoder(tokenizer), tokenizer,
                           tinysd.build_unet(SIZE // 4, tuple(cfg.unet_widths), heads=cfg.attention_heads),
                           cfg.prediction_type)
    pipe.set_progress_bar_config(disable=True)
    add_lora(pipe.unet, lora, client=0)
    set_scheduler(pipe, g.scheduler)
    kwargs = {}
    if merged:
        pipe.fuse_lora(components=["unet"], lora_scale=g.lora_scale)
    else:
        kwargs = {"cross_attention_kwargs": {"scale": g.lora_scale}}
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    prompts = [g.prompt.format(**{"class": c}) for c in CLASSES] * (g.batch_size // len(CLASSES) + 1)
    latents = torch.randn(g.batch_size, 4, SIZE // 4, SIZE // 4)

    def call() -> None:
        with torch.no_grad():
            pipe(prompt=prompts[: g.batch_size], latents=latents, num_inference_steps=g.steps,
                 guidance_scale=g.guidance_scale, output_type="np", **kwargs)
    return call


def cnn(batch: int, train: bool, channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model("cnn", CHANNELS, len(CLASSES), SIZE)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = torch.randn(batch, CHANNELS, SIZE, SIZE).contiguous(memory_format=fmt)
    y = torch.randint(len(CLASSES), (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def score() -> None:
        with torch.no_grad():
            model(x)
    return step if train else score


def timed(variants: dict[str, Callable[[], None]], repeat: int, warmup: int = 2) -> dict[str, float]:
    """Median ms a call of each variant, the variants timed in alternation; ``ratio``: the last over the first."""
    for call in variants.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, call in variants.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    out = {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}
    first, last = list(out)[0], list(out)[-1]
    out["ratio"] = round(out[last] / out[first], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threads = load_experiment(DEFAULT_PARAMS).threads
    torch.set_num_threads(threads)
    cfg = load_section(DEFAULT_PARAMS, "generator", GeneratorParams)
    lora = load_section(DEFAULT_PARAMS, "finetune", FinetuneParams)
    g = load_section(DEFAULT_PARAMS, "generate", GenerateParams)
    train = load_section(DEFAULT_PARAMS, "train", TrainParams)
    scoring = ComputeParams().scoring_batch
    result = {"threads": threads, "torch": torch.__version__, "repeat": args.repeat, "ms": {
        f"generate_{g.batch_size}_images": timed({
            "adapter_each_step_contiguous": sampler(cfg, lora, g, merged=False, channels_last=False),
            "adapter_each_step_channels_last": sampler(cfg, lora, g, merged=False, channels_last=True),
            "adapter_merged_contiguous": sampler(cfg, lora, g, merged=True, channels_last=False),
            "adapter_merged_channels_last": sampler(cfg, lora, g, merged=True, channels_last=True),
        }, args.repeat),
        f"cnn_train_step_{train.batch_size}": timed({
            "contiguous": cnn(train.batch_size, True, False), "channels_last": cnn(train.batch_size, True, True),
        }, args.repeat * 10),
        f"cnn_scoring_{scoring}": timed({
            "contiguous": cnn(scoring, False, False), "channels_last": cnn(scoring, False, True),
        }, args.repeat * 3),
    }}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
