"""The CUDA path at Stable Diffusion 1.5's real sizes: fine-tune a client LoRA and generate, timed.

A randomly initialised pipeline with SD 1.5's component sizes (U-Net 320/640/1280/1280 with 768-wide
cross-attention, VAE 128/256/512/512, 12-layer 768-wide CLIP text encoder; 512 px, 64 px latents) is saved as a
diffusers folder and used as `generator.base` would be: through a manifest, `load_pipeline` (fp16 on CUDA),
`finetune` (fp16 mixed precision through accelerate), `save_lora` / `load_lora` and `generate` — the functions
the stages call. Random weights make the images noise; the figures are speed and memory.

    python bench/gpu_sd15.py [--images 64] [--steps 50] [--per-class 16] [--out FILE]

Needs a CUDA GPU (about 20 GiB at the default sizes); nothing in the tests runs it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from regl.generator import tinysd
from regl.generator.base import MANIFEST, checkpoint_manifest, load_pipeline
from regl.generator.lora import FinetuneParams, finetune, load_lora, save_lora
from regl.generator.sample import GenerateParams, generate, per_class
from regl.generator.space import to_data

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def sd15_random(folder: Path) -> None:
    """SD 1.5's architecture with random weights, saved in fp16 as a diffusers folder."""
    torch.manual_seed(0)
    tok = tinysd.build_tokenizer([f"a photo of {c}" for c in CLASSES] + [GenerateParams().prompt])
    tok.model_max_length = 77
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    pipe = tinysd.assemble(vae, text, tok, unet).to(torch.float16)
    print({part: f"{tinysd.num_params(getattr(pipe, part)) / 1e6:.0f} M"
           for part in ("unet", "vae", "text_encoder")}, flush=True)
    pipe.save_pretrained(folder)


def timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="the client's real images (two classes)")
    ap.add_argument("--steps", type=int, default=50, help="LoRA training steps")
    ap.add_argument("--batch", type=int, default=8, help="LoRA training batch")
    ap.add_argument("--per-class", type=int, default=16, help="images generated per class (10 classes)")
    ap.add_argument("--gen-batch", type=int, nargs="+", default=[16, 64], help="generation batch sizes to time")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device")
    root = Path(tempfile.mkdtemp())
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    _, result["build_s"], _ = timed(lambda: sd15_random(root / "sd15-random"))
    (root / "generator").mkdir()
    (root / "generator" / MANIFEST).write_text(json.dumps(checkpoint_manifest(str(root / "sd15-random"), None)))
    pipe, result["load_s"], _ = timed(lambda: load_pipeline(root / "generator"))
    print("loaded:", pipe.unet.dtype, pipe.unet.device, flush=True)

    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, size=(args.images, 28, 28, 1), dtype=np.uint8)
    labels = np.array([0, 3] * (args.images // 2))
    cfg = FinetuneParams(steps=args.steps, batch_size=args.batch)
    stats, secs, peak = timed(lambda: finetune(pipe, pixels, labels, CLASSES, cfg, GenerateParams(), client=0))
    result["finetune"] = {**stats, "batch": args.batch, "seconds": round(secs, 1),
                          "seconds_per_step": round(secs / args.steps, 3), "peak_gib": round(peak, 1)}
    print("finetune:", result["finetune"], flush=True)
    save_lora(pipe, root / "lora")
    del pipe
    torch.cuda.empty_cache()

    pipe = load_pipeline(root / "generator")
    load_lora(pipe, root / "lora")
    result["generate"] = []
    for batch in args.gen_batch:
        sample = GenerateParams(batch_size=batch)
        prompts, latents, _ = per_class(pipe, sample.prompt, CLASSES, [args.per_class] * len(CLASSES), 0, "gpu")
        generate(pipe, prompts[:batch], latents[:batch], sample, 0.8)  # warm-up: kernels, cuDNN autotune
        images, secs, peak = timed(lambda: generate(pipe, prompts, latents, sample, 0.8))
        small = to_data(images[:4], 28, 1)
        row = {"batch": batch, "images": len(images), "side": images.shape[1], "steps": sample.steps,
               "scheduler": sample.scheduler, "guidance": sample.guidance_scale, "seconds": round(secs, 2),
               "images_per_s": round(len(images) / secs, 2), "peak_gib": round(peak, 1),
               "finite": bool(np.isfinite(images).all()), "data_shape": list(small.shape)}
        result["generate"].append(row)
        print("generate:", row, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
