"""generator_quality's Fréchet distance is taken class by class: a client's real images follow its skewed share of
the classes, the synthetic ones are balanced, and pooled the mismatch of the mixtures decides which set is closer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regl.data.images import encode_many
from regl.data.imageset import open_images
from regl.data.shards import Shard, write_shard
from regl.generator.quality import (MIN_CLASS_IMAGES, class_frechet, client_quality, frechet_distance,
                                   quality_report)

CLASSES = [f"class {k}" for k in range(10)]


class Brightness(torch.nn.Module):
    """A stand-in reference classifier: its features are the mean brightness of an image's top and bottom halves."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[2] // 2
        return torch.stack([x[:, :, :half].mean((1, 2, 3)), x[:, :, half:].mean((1, 2, 3))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), len(CLASSES))


def shard(path, groups: list[tuple[int, int, float]], seed: int):
    """(label, count, brightness in [0, 1]) groups of 8×8 grey images, each pixel jittered."""
    rng = np.random.default_rng(seed)
    pixels, labels = [], []
    for label, n, level in groups:
        pixels.append(np.clip(rng.normal(255 * level, 12, (n, 8, 8, 1)), 0, 255).astype(np.uint8))
        labels += [label] * n
    write_shard(path, Shard(encode_many(np.concatenate(pixels)), np.array(labels), CLASSES))
    return open_images([path], 1)


def test_a_client_with_one_image_of_a_class_is_judged_on_the_classes_it_holds_many_of(tmp_path):
    # Like client_7 of the committed run: 200 images of class 1, one of class 8. The adapted images of class 1 are
    # the real ones' brightness, the vanilla ones are off; the adapter draws class 8 like the client's one image.
    # Pooled, the 40 bright class-8 images against a real set that is nearly all class 1 make the adapted set look
    # farther; class by class it is closer.
    real = shard(tmp_path / "real.parquet", [(1, 200, 0.2), (8, 1, 0.9)], 0)
    adapted = shard(tmp_path / "adapted.parquet", [(1, 40, 0.2), (8, 40, 0.9)] + [(k, 1, 0.5) for k in (0, 2)], 1)
    vanilla = shard(tmp_path / "vanilla.parquet", [(1, 40, 0.3), (8, 40, 0.35)], 2)
    q, _ = client_quality(Brightness(), real, adapted, vanilla)
    assert q["adapted_closer"] and q["frechet_adapted"] < q["frechet_vanilla"]

    from regl.evaluation.scoring import embed
    pooled = [frechet_distance(embed(Brightness(), real).numpy(), embed(Brightness(), s).numpy())
              for s in (adapted.of_classes([1, 8]), vanilla)]
    assert pooled[0] > pooled[1]  # the premise: pooling would call the vanilla images closer


def test_class_frechet_weights_each_class_by_its_real_images_and_leaves_out_the_thin_ones():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (60 + 30 + MIN_CLASS_IMAGES - 1, 3))
    real_labels = np.repeat([0, 1, 2], [60, 30, MIN_CLASS_IMAGES - 1])
    fake = rng.normal(0.5, 1.2, (120, 3))
    fake_labels = np.repeat([0, 1, 2], 40)
    by_class = [frechet_distance(real[real_labels == k], fake[fake_labels == k]) for k in (0, 1)]
    assert class_frechet(real, real_labels, fake, fake_labels) == pytest.approx((60 * by_class[0] + 30 * by_class[1])
                                                                               / 90)
    assert class_frechet(real[-5:], real_labels[-5:], fake, fake_labels) is None  # no class has enough images


def test_a_client_without_a_class_of_enough_images_counts_but_is_not_measured():
    def entry(closer):
        return {"synthetic_images": 10, "correct": 9, "adapted_closer": closer,
                "frechet_vanilla": None if closer is None else 2.0, "frechet_adapted": None if closer is None else 1.0}
    report = quality_report({"client_0": entry(True), "client_1": entry(None)}, [np.ones(10)] * 2, CLASSES)
    assert (report["clients"], report["clients_measured"], report["clients_adapted_closer"]) == (2, 1, 1)
    assert (report["frechet_vanilla_mean"], report["frechet_adapted_mean"]) == (2.0, 1.0)
