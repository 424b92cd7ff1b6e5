"""Benchmark the generator on the embedded default: pre-training recipes and LoRA recipes compared.

Needs `dvc repro pretrain_generator reference_classifier partition` first (it reads models/generator,
models/reference_classifier, data/prepared/public.parquet and data/clients). Reports, on this machine:

- generation throughput (images/s, generate.* defaults: guidance, scheduler, steps, batch);
- for each LoRA recipe in RECIPES, on a few clients: fine-tune seconds per client, the adapted images'
  classifiability (all classes, the client's own, and the others), and the Fréchet distance of the client's real images
  to vanilla (LoRA scale 0) vs adapted images, same seeds;
- with --pretrain-recipes, for each tiny-sd pre-training recipe in PRETRAIN_RECIPES (overrides of params.yaml's
  `generator` section; most are changes of the previous default, PREVIOUS): its CPU seconds (process time, all threads) and wall seconds, the base model's images
  (classifiability, Fréchet distance to the real public pool) and the default LoRA's adapted images on
  --clients (as above). "default" reuses models/generator (its seconds are the stage's, not measured here).
- with --sampling-steps, the base model's images at each number of sampler steps: classifiability, Fréchet
  distance to the real public pool, and the seconds it took (generation and judging).

    python bench/generator_bench.py [--clients 0 1 3 5] [--images-per-class 20] [--recipes all] [--out FILE]
    python bench/generator_bench.py --recipes none --pretrain-recipes all --clients 1 3 5 --out bench/results/pretrain_recipes.json
    python bench/generator_bench.py --recipes none --throughput-images 0 --sampling-steps 20 12 8 --images-per-class 30 --out bench/results/sampling_steps.json
    python bench/generator_bench.py --generator INVERT_BASE --clients 0 3 5 7 --throughput-images 0 --recipes ... --out bench/results/lora_invert.json

(the last: the recipes of docs/generator.md's "Over the `invert` base", over a base pre-trained at
generator.public_style invert)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from regl.generator.base import load_pipeline
from regl.generator.lora import FinetuneParams, finetune
from regl.generator.pretrain import GeneratorParams
from regl.generator.quality import client_quality, frechet_distance
from regl.generator.sample import GenerateParams, generate, per_class
from regl.generator.space import to_data
from regl.data.images import encode_many
from regl.data.imageset import open_images
from regl.data.naming import client_file, client_name
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.evaluation.reference_classifier import load_reference
from regl.evaluation.scoring import accuracy, embed, predicted_classes
from regl.data.shards import Shard, read_shard, write_shard

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
CONV = ATTENTION + ("conv1", "conv2")
# Self-attention and convs only: the cross-attention projections (which read the prompt) stay as trained.
SELF_CONV = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "conv1", "conv2")

# Variations of the finetune.* defaults in params.yaml (150 steps, batch 32, lr 1e-3, r 8, 10 % empty captions).
RECIPES = {
    "attention (diffusers recipe)": {"target_modules": ATTENTION},
    "attention, no empty captions": {"target_modules": ATTENTION, "empty_caption_share": 0.0},
    "attention + conv": {"target_modules": CONV},
    "self-attention + conv": {"target_modules": SELF_CONV},
    "attention, style token": {"target_modules": ATTENTION, "caption": "a photo of {class}, sks style"},
    "attention, prior 10/class": {"target_modules": ATTENTION, "prior_images_per_class": 10},
    "attention, 300 steps": {"target_modules": ATTENTION, "steps": 300},
    # fewer steps (the LoRA is half of a per-client stage's work)
    "attention + conv, 100 steps": {"target_modules": CONV, "steps": 100},
    "attention + conv, 100 steps, lr 1.5e-3": {"target_modules": CONV, "steps": 100, "lr": 1.5e-3},
    "attention + conv, 75 steps, lr 2e-3": {"target_modules": CONV, "steps": 75, "lr": 2e-3},
    # Why an adapter that learns a client's style on its own classes leaves the others in the base's style (the
    # `invert` base, docs/generator.md): what it adapts, its capacity, its steps, what its captions tie the style to.
    # "prompt" and "guidance_scale" are generation's (generate.*), the rest finetune's.
    "self-attention + conv, 100 steps": {"target_modules": SELF_CONV, "steps": 100},
    "conv only, 100 steps": {"target_modules": ("conv1", "conv2"), "steps": 100},
    "attention + conv, 100 steps, rank 32": {"target_modules": CONV, "steps": 100, "rank": 32, "alpha": 32},
    "attention + conv, 300 steps": {"target_modules": CONV, "steps": 300},
    "attention + conv, 100 steps, half empty captions": {"target_modules": CONV, "steps": 100,
                                                         "empty_caption_share": 0.5},
    "attention + conv, 100 steps, style token": {"target_modules": CONV, "steps": 100,
                                                 "caption": "a photo of {class}, sks style",
                                                 "prompt": "A photo of {class}, sks style"},
    # guidance extrapolates away from the unconditional branch, which the empty captions adapt to the client
    "attention + conv, 100 steps, no empty captions": {"target_modules": CONV, "steps": 100,
                                                       "empty_caption_share": 0.0},
    "attention + conv, 100 steps, guidance 1": {"target_modules": CONV, "steps": 100, "guidance_scale": 1.0},
}


# The `generator` section before params.yaml adopted the 600-step VAE and the 1,200-step v-prediction U-Net: the
# recipes below were measured as changes of it (docs/generator.md: "Pre-training recipe").
PREVIOUS = {"vae_steps": 200, "vae_lr": None, "unet_steps": 2500, "lr": 1e-3, "prediction_type": "epsilon",
            "snr_gamma": None}

# Overrides of params.yaml's `generator` section. "default" is models/generator as the stage made it.
PRETRAIN_RECIPES = {
    "default": {},
    "previous default": PREVIOUS,
    "600 steps": {**PREVIOUS, "unet_steps": 600},
    "600 steps, Min-SNR 5": {**PREVIOUS, "unet_steps": 600, "snr_gamma": 5.0},
    "600 steps, v-pred, Min-SNR 5": {**PREVIOUS, "unet_steps": 600, "prediction_type": "v_prediction", "snr_gamma": 5.0},
    "600 steps, v-pred, Min-SNR 5, lr 2e-3": {**PREVIOUS, "unet_steps": 600, "prediction_type": "v_prediction",
                                               "snr_gamma": 5.0, "lr": 2e-3},
    "600 steps, Min-SNR 5, VAE 100": {**PREVIOUS, "unet_steps": 600, "snr_gamma": 5.0, "vae_steps": 100},
    "600 steps, v-pred, Min-SNR 5, lr 4e-3": {**PREVIOUS, "unet_steps": 600, "prediction_type": "v_prediction",
                                               "snr_gamma": 5.0, "lr": 4e-3},
    "1200 steps, v-pred, Min-SNR 5, lr 2e-3": {**PREVIOUS, "unet_steps": 1200, "prediction_type": "v_prediction",
                                                "snr_gamma": 5.0, "lr": 2e-3},
    "1200 steps, v-pred, Min-SNR 5, lr 4e-3": {**PREVIOUS, "unet_steps": 1200, "prediction_type": "v_prediction",
                                                "snr_gamma": 5.0, "lr": 4e-3},
    # The U-Net's shape: one attention head a layer (SD's 8 heads leave 4 channels a head at width 32),
    # more images a step, narrower deepest level.
    "600 steps, v-pred, Min-SNR 5, lr 4e-3, 1 head": {**PREVIOUS, "unet_steps": 600, "prediction_type": "v_prediction",
                                                       "snr_gamma": 5.0, "lr": 4e-3, "attention_heads": 1},
    "600 steps, v-pred, Min-SNR 5, lr 4e-3, 1 head, batch 128": {
        **PREVIOUS, "unet_steps": 600, "prediction_type": "v_prediction", "snr_gamma": 5.0, "lr": 4e-3, "attention_heads": 1,
        "batch_size": 128},
    "600 steps, v-pred, Min-SNR 5, lr 4e-3, 1 head, widths 32-64-64": {
        **PREVIOUS, "unet_steps": 600, "prediction_type": "v_prediction", "snr_gamma": 5.0, "lr": 4e-3, "attention_heads": 1,
        "unet_widths": [32, 64, 64]},
}


def as_images(pixels: np.ndarray, labels: np.ndarray, names: list[str], folder: Path):
    """Generated pixels as the dataset type the quality functions read (a shard in ``folder``)."""
    path = Path(tempfile.mkstemp(suffix=".parquet", dir=folder)[1])
    write_shard(path, Shard(encode_many(pixels), np.asarray(labels, np.int64), names))
    return open_images([path])


def throughput(pipe, cfg: GenerateParams, names: list[str], n: int) -> float:
    prompts, latents, _ = per_class(pipe, cfg.prompt, names, [n // len(names)] * len(names), 0, "bench")
    generate(pipe, prompts[: cfg.batch_size], latents[: cfg.batch_size], cfg)  # warm-up
    start = time.perf_counter()
    generate(pipe, prompts, latents, cfg)
    return len(prompts) / (time.perf_counter() - start)


def run_recipe(overrides: dict, base: FinetuneParams, sample: GenerateParams, scale: float, clients: list[int],
               per_class_n: int, model, generator: Path, scratch: Path) -> dict:
    overrides = dict(overrides)
    sample = sample.model_copy(update={k: overrides.pop(k) for k in ("prompt", "guidance_scale") if k in overrides})
    cfg = base.model_copy(update=overrides)
    rows, times = {}, []
    for c in clients:
        shard = read_shard(client_file(Path("data/clients"), c))
        real = open_images([client_file(Path("data/clients"), c)])
        names, pixels = shard.class_names, shard.pixels()
        size, ch = pixels.shape[1], pixels.shape[3]
        pipe = load_pipeline(generator)
        prompts, latents, labels = per_class(pipe, sample.prompt, names, [per_class_n] * len(names), 0, "bench", c)
        own = np.isin(labels, np.flatnonzero(real.class_counts() > 0))
        vanilla = to_data(generate(pipe, [p for p, o in zip(prompts, own) if o], latents[own], sample), size, ch)
        start = time.perf_counter()
        finetune(pipe, pixels, shard.labels, names, cfg, GenerateParams(), c)
        times.append(time.perf_counter() - start)
        pipe.fuse_lora(components=["unet"], lora_scale=scale)  # as stage generate samples (regl.generator.lora.load_lora)
        adapted = to_data(generate(pipe, prompts, latents, sample), size, ch)
        q, _ = client_quality(model, real, as_images(adapted, labels, names, scratch),
                              as_images(vanilla, labels[own], names, scratch))
        rows[client_name(c)] = {k: q[k] for k in ("classifiability", "classifiability_own_classes",
                                                  "classifiability_own_classes_vanilla", "frechet_vanilla",
                                                  "frechet_adapted")}
        # the classes the client generates for the others: every class has per_class_n images
        held = int(own.sum()) // per_class_n
        rows[client_name(c)]["classifiability_other_classes"] = round(
            (len(names) * q["classifiability"] - held * q["classifiability_own_classes"]) / (len(names) - held), 4)
    measured = [r for r in rows.values() if r["frechet_vanilla"] is not None]  # a class of ≥ 10 real images
    return {"finetune_s_per_client": round(float(np.mean(times)), 1),
            "classifiability": round(float(np.mean([r["classifiability"] for r in rows.values()])), 3),
            "own_classes": round(float(np.mean([r["classifiability_own_classes"] for r in rows.values()])), 3),
            "own_classes_vanilla": round(float(np.mean([r["classifiability_own_classes_vanilla"]
                                                       for r in rows.values()])), 3),
            "other_classes": round(float(np.mean([r["classifiability_other_classes"] for r in rows.values()])), 3),
            "frechet": "per class",  # generator_quality's class-by-class distance (before it: pooled)
            "adapted_closer": sum(r["frechet_adapted"] < r["frechet_vanilla"] for r in measured),
            "clients_measured": len(measured),
            "frechet_vanilla_mean": _mean([r["frechet_vanilla"] for r in measured]),
            "frechet_adapted_mean": _mean([r["frechet_adapted"] for r in measured]),
            "per_client": rows}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 1) if values else None


def base_quality(generator: Path, sample: GenerateParams, per_class_n: int, model, reference, scratch: Path) -> dict:
    """The base model's own images (no adapter): classifiability, and Fréchet distance to ``reference`` (real
    images, embedded)."""
    pipe = load_pipeline(generator)
    names = reference.class_names
    prompts, latents, labels = per_class(pipe, sample.prompt, names, [per_class_n] * len(names), 0, "bench-base")
    size, ch = reference.shape[0], reference.shape[2]
    images = as_images(to_data(generate(pipe, prompts, latents, sample), size, ch), labels, names, scratch)
    fd = frechet_distance(embed(model, reference).numpy(), embed(model, images).numpy())
    return {"base_classifiability": round(accuracy(labels, predicted_classes(model, images)), 3),
            "base_frechet_to_real": round(fd, 1)}


def pretrain_recipe(name: str, overrides: dict, folder: Path) -> dict:
    """Pre-train tiny-sd with params.yaml's `generator` section plus ``overrides`` into ``folder``, as the stage
    does; "default" (no overrides) reuses models/generator."""
    import torch

    from regl.generator.base import MANIFEST
    from regl.generator.pretrain import pretrain_tiny
    from regl.generator.tinysd import write_vocabulary_files
    from regl.data.tensors import shard_tensors

    if not overrides:
        return {"generator": "models/generator", "cpu_s": None, "wall_s": None}
    cfg = load_section(DEFAULT_PARAMS, "generator", GeneratorParams).model_copy(update=overrides)
    cfg = GeneratorParams.model_validate(cfg.model_dump())
    pool = read_shard("data/prepared/public.parquet")
    torch.set_num_threads(load_experiment(DEFAULT_PARAMS).threads)
    cpu, wall = time.process_time(), time.perf_counter()
    pipe = pretrain_tiny(*shard_tensors(pool), pool.class_names, cfg)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    folder.mkdir(parents=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_vocabulary_files(pipe.tokenizer, folder / "tokenizer")
    (folder / MANIFEST).write_text(json.dumps({"kind": "tiny", "class_names": pool.class_names,
                                               "public_style": cfg.public_style}))
    print(f"{name}: pre-trained in {cpu:.0f} CPU s, {wall:.0f} s wall", flush=True)
    return {"generator": str(folder), "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[0, 1, 3, 5])
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--recipes", nargs="*", default=["all"], help="names from RECIPES, all, or none (budgets only)")
    parser.add_argument("--throughput-images", type=int, default=500)
    parser.add_argument("--pretrain", action="store_true", help="also time a full tiny-sd pre-training")
    parser.add_argument("--pretrain-recipes", nargs="*", default=[],
                        help="names from PRETRAIN_RECIPES, or all: pre-train each and measure its images")
    parser.add_argument("--generator", type=Path, default=Path("models/generator"), help="base generator folder")
    parser.add_argument("--sampling-steps", type=int, nargs="*", default=[],
                        help="the base model's images at each of these generate.steps (classifiability, FD, seconds)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/generator.json"))
    args = parser.parse_args()

    sample = g = load_section(DEFAULT_PARAMS, "generate", GenerateParams)
    base = load_section(DEFAULT_PARAMS, "finetune", FinetuneParams)
    model, config = load_reference("models/reference_classifier")
    results: dict = {}

    if args.pretrain:
        from regl.generator.pretrain import pretrain_tiny
        from regl.data.tensors import shard_tensors

        gp = load_section(DEFAULT_PARAMS, "generator", GeneratorParams)
        pool = read_shard("data/prepared/public.parquet")
        start = time.perf_counter()
        pretrain_tiny(*shard_tensors(pool), pool.class_names, gp)
        results["pretrain_s"] = round(time.perf_counter() - start, 1)
        print(f"pretrain: {results['pretrain_s']} s")

    scratch = Path(tempfile.mkdtemp(prefix="regl-generator-bench-"))
    if args.throughput_images:
        pipe = load_pipeline(args.generator)
        rate = throughput(pipe, sample, config["class_names"], args.throughput_images)
        results["generation_images_per_s"] = round(rate, 1)
        print(f"generation: {results['generation_images_per_s']} images/s "
              f"({g.scheduler}, {g.steps} steps, guidance {g.guidance_scale}, batch {g.batch_size})")

    results["sampling_steps"] = {}
    for steps in args.sampling_steps:
        start = time.perf_counter()
        r = base_quality(args.generator, sample.model_copy(update={"steps": steps}), args.images_per_class, model,
                         open_images(["data/prepared/public.parquet"]), scratch)
        results["sampling_steps"][steps] = {**r, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{steps} sampling steps: {results['sampling_steps'][steps]}", flush=True)
        save(args, results)

    names = {"all": list(RECIPES), "none": []}.get(" ".join(args.recipes), args.recipes)
    results["recipes"] = {}
    header = (f"{'recipe':<36}{'ft s':>6}{'class.':>8}{'own':>7}{'own van':>8}{'other':>7}{'FD van':>9}{'FD ad':>9}"
              f"{'closer':>8}")
    if names:
        print(header)
    for name in names:
        r = run_recipe(RECIPES[name], base, sample, g.lora_scale, args.clients, args.images_per_class, model,
                       args.generator, scratch)
        results["recipes"][name] = r
        print(f"{name:<36}{r['finetune_s_per_client']:>6}{r['classifiability']:>8}{r['own_classes']:>7}"
              f"{r['own_classes_vanilla']:>8}{r['other_classes']:>7}{r['frechet_vanilla_mean']:>9}"
              f"{r['frechet_adapted_mean']:>9}"
              f"{r['adapted_closer']:>5}/{len(args.clients)}", flush=True)
        save(args, results)

    pretrain_names = list(PRETRAIN_RECIPES) if args.pretrain_recipes == ["all"] else args.pretrain_recipes
    results["pretrain_recipes"] = {}
    reference = open_images(["data/prepared/public.parquet"])
    for name in pretrain_names:
        r = pretrain_recipe(name, PRETRAIN_RECIPES[name], scratch / f"pretrain-{len(results['pretrain_recipes'])}")
        r.update(base_quality(Path(r["generator"]), sample, args.images_per_class, model, reference, scratch))
        lora = run_recipe({}, base, sample, g.lora_scale, args.clients, args.images_per_class, model,
                          Path(r["generator"]), scratch)
        r.update({"overrides": PRETRAIN_RECIPES[name], "lora": lora})
        results["pretrain_recipes"][name] = r
        print(f"{name:<40} CPU {r['cpu_s']} s, wall {r['wall_s']} s | base: classifiability "
              f"{r['base_classifiability']}, FD to real {r['base_frechet_to_real']} | adapted: classifiability "
              f"{lora['classifiability']}, FD vanilla {lora['frechet_vanilla_mean']} -> adapted "
              f"{lora['frechet_adapted_mean']}, closer {lora['adapted_closer']}/{len(args.clients)}", flush=True)
        save(args, results)
    save(args, results)


def save(args: argparse.Namespace, results: dict) -> None:
    """After every recipe (a long comparison keeps what it has) and at the end."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "clients": args.clients,
                                    "images_per_class": args.images_per_class}, indent=2) + "\n")


if __name__ == "__main__":
    main()
