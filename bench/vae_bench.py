"""How well tiny-sd's VAE keeps what tells the classes apart: the ceiling of every generated image's classifiability.

A generated image is decoded by the VAE, so it can be no more classifiable than the VAE's reconstructions of real
images. For each VAE recipe (optimizer steps, learning rate; the rest as pretrain_generator trains it: the public
pool in its own and in `generator.public_style`, batch `generator.batch_size / 2`, the same initial weights) this
trains the VAE alone and reports its seconds, its reconstruction error on real test images, and the reference
classifier's accuracy on those reconstructions, in total and per class, beside its accuracy on the images
themselves.

Needs `dvc repro prepare reference_classifier` (data/prepared/{public,test}.parquet, models/reference_classifier).

    python bench/vae_bench.py [--recipes 200@0.001 600@0.001 600@0.003] [--test-every 5] [--out bench/results/vae.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from generator_bench import as_images
from regl.core.params import DEFAULT_PARAMS, load_experiment, load_section
from regl.core.seeding import derive_seed
from regl.data.shards import read_shard
from regl.data.tensors import to_float
from regl.evaluation.reference_classifier import load_reference
from regl.evaluation.scoring import accuracy, class_accuracy, predicted_classes
from regl.generator import tinysd
from regl.generator.pretrain import GeneratorParams, train_vae
from regl.generator.space import to_data
from regl.generator.styles import apply_style


def classified(model, pixels: np.ndarray, labels: np.ndarray, names: list[str], scratch: Path) -> dict:
    predicted = predicted_classes(model, as_images(pixels, labels, names, scratch))
    return {"classifiability": round(accuracy(labels, predicted), 3),
            "per_class": {n: round(float(a), 2) for n, a in zip(names, class_accuracy(labels, predicted, len(names)))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["200@0.001", "600@0.001", "600@0.003"],
                        help="VAE recipes as STEPS@LR")
    parser.add_argument("--test-every", type=int, default=5, help="use every Nth test image")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vae.json"))
    args = parser.parse_args()

    cfg = load_section(DEFAULT_PARAMS, "generator", GeneratorParams)
    torch.set_num_threads(load_experiment(DEFAULT_PARAMS).threads)
    model, _ = load_reference("models/reference_classifier")
    pool = read_shard("data/prepared/public.parquet")
    test = read_shard("data/prepared/test.parquet")
    test = test.take(np.arange(0, len(test), args.test_every))
    names, pixels, labels = test.class_names, test.pixels(), test.labels
    size, channels = pixels.shape[1], pixels.shape[3]
    public = to_float(pool.pixels())
    both = torch.cat([public, apply_style(public, cfg.public_style)]) if cfg.public_style != "none" else public
    real = to_float(pixels)
    scratch = Path(tempfile.mkdtemp(prefix="regl-vae-bench-"))
    results = {"test_images": len(test), "public_style": cfg.public_style,
               "real": classified(model, pixels, labels, names, scratch), "recipes": {}}
    print(f"{'recipe':<14}{'s':>6}{'recon MSE':>11}{'classifiable':>14}  per class")
    print(f"{'real images':<14}{'':>6}{'':>11}{results['real']['classifiability']:>14}")
    for recipe in args.recipes:
        steps, lr = int(recipe.split("@")[0]), float(recipe.split("@")[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "pretrain", "init"))  # the stage's initial VAE weights
            vae = tinysd.build_vae(channels, size)
        start = time.perf_counter()
        train_vae(vae, both, steps, cfg.batch_size // 2, lr, cfg.seed)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            rebuilt = vae.decode(vae.encode(real).latent_dist.mean).sample
        r = {"steps": steps, "lr": lr, "seconds": round(seconds, 1),
             "reconstruction_mse": round(float(((rebuilt - real) ** 2).mean()), 4),
             **classified(model, to_data(((rebuilt + 1) / 2).permute(0, 2, 3, 1).numpy(), size, channels), labels,
                          names, scratch)}
        results["recipes"][recipe] = r
        print(f"{recipe:<14}{seconds:>6.0f}{r['reconstruction_mse']:>11}{r['classifiability']:>14}  "
              + " ".join(f"{n.split('/')[0][:7]} {a}" for n, a in r["per_class"].items()), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
