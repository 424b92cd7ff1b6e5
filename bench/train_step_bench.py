"""Milliseconds a training step of tiny-sd's three trainers, laid out two ways: contiguous tensors with the default
AdamW, and channels-last convolutions with the fused AdamW.

The trainers are pretrain_generator's VAE (batch generator.batch_size / 2) and U-Net + text encoder (batch
generator.batch_size), and finetune_lora's LoRA on the U-Net (batch finetune.batch_size), each at params.yaml's
sizes on random weights and random 32 px images (a step's cost does not depend on the values). The two layouts
alternate, so both see the same machine; the figure is the median over ``--steps`` timed steps after a warm-up.

    python bench/train_step_bench.py [--steps 20] [--out bench/results/train_step.json]

With ``--half-batch`` it times instead the VAE's and the U-Net's step in the stages' layout (channels-last, fused
AdamW) at params.yaml's generator.batch_size and at half of it, the four alternated (the `pretrain-recipe` grid's
`batch32` column):

    python bench/train_step_bench.py --half-batch --steps 12 --out bench/results/train_step_half_batch.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.generator import tinysd
from regl.generator.lora import FinetuneParams, add_lora
from regl.generator.pretrain import GeneratorParams

from layout_bench import timed  # bench/: the alternated timing both benches use

SIZE, CHANNELS = 32, 1  # the embedded default's images


def vae_step(cfg: GeneratorParams):
    vae = tinysd.build_vae(CHANNELS, SIZE)
    x = torch.rand(cfg.batch_size // 2, CHANNELS, SIZE, SIZE) * 2 - 1

    def step(opt):
        post = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(post.sample()).sample, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return vae, list(vae.parameters()), step


def denoiser_step(cfg: GeneratorParams, lora: FinetuneParams | None = None):
    """A U-Net step at batch generator.batch_size, or with ``lora`` its adapter's step at finetune.batch_size."""
    unet = tinysd.build_unet(SIZE // 4, tuple(cfg.unet_widths), heads=cfg.attention_heads)
    batch = cfg.batch_size
    if lora is not None:
        unet.requires_grad_(False)
        add_lora(unet, lora, client=0)
        batch = lora.batch_size
    z, cond = torch.randn(batch, 4, SIZE // 4, SIZE // 4), torch.randn(batch, tinysd.MAX_TOKENS, 64)

    def step(opt):
        loss = F.mse_loss(unet(z, torch.randint(1000, (batch,)), cond).sample, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return unet, [p for p in unet.parameters() if p.requires_grad], step


def time_layouts(build, steps: int, warmup: int = 3) -> dict[str, float]:
    """Median ms a step for each layout, the two timed in alternation on one model each."""
    variants = {}
    for name, channels_last in (("contiguous", False), ("channels_last_fused", True)):
        model, params, step = build()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(params, lr=1e-4, fused=channels_last or None)
        model.train()
        variants[name] = functools.partial(step, opt)
    return timed(variants, steps, warmup)


def time_half_batch(cfg: GeneratorParams, steps: int, warmup: int = 3) -> dict[str, float]:
    """Median ms a step of the VAE and the U-Net, channels-last with the fused AdamW, at cfg.batch_size and half;
    the keys name generator.batch_size (the VAE trains at half of it)."""
    variants = {}
    for batch in (cfg.batch_size, cfg.batch_size // 2):
        c = cfg.model_copy(update={"batch_size": batch})
        for name, build in (("vae", vae_step), ("unet", denoiser_step)):
            model, params, step = build(c)
            model.to(memory_format=torch.channels_last)
            model.train()
            variants[f"{name}_batch{batch}"] = functools.partial(step, torch.optim.AdamW(params, lr=1e-4, fused=True))
    out = timed(variants, steps, warmup)
    del out["ratio"]  # timed's last-over-first; the ratios that mean something are per trainer
    for name in ("vae", "unet"):
        out[f"{name}_ratio"] = round(out[f"{name}_batch{cfg.batch_size // 2}"] / out[f"{name}_batch{cfg.batch_size}"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--half-batch", action="store_true",
                        help="time the VAE and U-Net at generator.batch_size and half of it instead")
    args = parser.parse_args()
    threads = load_experiment(DEFAULT_PARAMS).threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_section(DEFAULT_PARAMS, "generator", GeneratorParams)
    lora = load_section(DEFAULT_PARAMS, "finetune", FinetuneParams)
    if args.half_batch:
        ms = time_half_batch(cfg, args.steps)
    else:
        ms = {"vae": time_layouts(lambda: vae_step(cfg), args.steps),
              "unet": time_layouts(lambda: denoiser_step(cfg), args.steps),
              "lora": time_layouts(lambda: denoiser_step(cfg, lora), args.steps)}
    text = json.dumps({"threads": threads, "torch": torch.__version__, "steps": args.steps, "ms_per_step": ms},
                      indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
