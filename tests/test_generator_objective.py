"""The generator's training recipe against hand computations on a toy batch: the Min-SNR-γ weights, the
v-prediction target, the loss they make, and the fused EMA against the per-tensor loop it replaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_generator import CLASSES, client_images

from regl.generator import tinysd
from regl.generator.objective import denoising_loss, denoising_target, min_snr_weights
from regl.generator.pretrain import EMA, GeneratorParams, pretrain_tiny

T = torch.tensor([0, 10, 250, 500, 999])


def alpha_bar_by_hand(t: int) -> float:
    """Stable Diffusion's scaled-linear schedule written out: beta_i = (sqrt(0.00085) + i/999 (sqrt(0.012) -
    sqrt(0.00085)))^2, alpha_bar_t = prod_{i<=t} (1 - beta_i)."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    prod = 1.0
    for i in range(t + 1):
        prod *= 1 - (lo + i / 999 * (hi - lo)) ** 2
    return prod


def toy_batch():
    gen = torch.Generator().manual_seed(0)
    shape = (len(T), 4, 3, 3)
    return (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_weights_are_the_papers(kind):
    gamma = 5.0
    snr = np.array([alpha_bar_by_hand(int(t)) / (1 - alpha_bar_by_hand(int(t))) for t in T])
    expected = np.minimum(snr, gamma) / (snr if kind == "epsilon" else snr + 1)
    got = min_snr_weights(tinysd.build_scheduler(kind), T, gamma).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # low noise (high SNR) is weighted down, high noise is not: the reason the recipe converges faster
    assert got[0] < 0.01 and got[-1] == pytest.approx(1.0 if kind == "epsilon" else snr[-1] / (snr[-1] + 1), rel=1e-4)


def test_v_prediction_target_is_sqrt_abar_eps_minus_sqrt_one_minus_abar_x0():
    latents, noise, _ = toy_batch()
    abar = torch.tensor([alpha_bar_by_hand(int(t)) for t in T]).view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    got = denoising_target(tinysd.build_scheduler("v_prediction"), latents, noise, T)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert denoising_target(tinysd.build_scheduler("epsilon"), latents, noise, T) is noise


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_weighted_loss_is_the_weighted_mean_of_per_sample_errors(kind):
    latents, noise, pred = toy_batch()
    scheduler = tinysd.build_scheduler(kind)
    target = denoising_target(scheduler, latents, noise, T)
    snr = torch.tensor([alpha_bar_by_hand(int(t)) / (1 - alpha_bar_by_hand(int(t))) for t in T])
    weights = torch.minimum(snr, torch.tensor(5.0)) / (snr if kind == "epsilon" else snr + 1)
    per_sample = torch.stack([((p - q) ** 2).mean() for p, q in zip(pred, target)])
    expected = (weights * per_sample).mean()
    torch.testing.assert_close(denoising_loss(scheduler, pred, latents, noise, T, 5.0), expected.float(),
                               rtol=1e-4, atol=1e-6)
    assert denoising_loss(scheduler, pred, latents, noise, T) == F.mse_loss(pred, target)  # snr_gamma off


def loop_ema(steps: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """The per-tensor loop the fused EMA replaced, with its warm-up decay min(decay, (1 + n) / (10 + n))."""
    shadow = [p.clone() for p in steps[0]]
    for n, params in enumerate(steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        for s, p in zip(shadow, params):
            s.mul_(d).add_(p, alpha=1 - d)
    return shadow


def test_fused_ema_gives_the_loops_bytes_in_one_call_per_step():
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3,), (2, 4, 3, 3)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    history = [[p.detach().clone() for p in params]]
    ema = EMA(params, decay=0.9)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(12):
            with torch.no_grad():
                for p in params:
                    p.add_(torch.randn(p.shape, generator=gen))
            history.append([p.detach().clone() for p in params])
            ema.update()
    names = [e.name for e in prof.events()]
    assert names.count("aten::_foreach_mul_") == 12 and names.count("aten::_foreach_add_") == 12
    for got, want in zip(ema.shadow, loop_ema(history, 0.9)):
        assert torch.equal(got, want)
    ema.copy_to_params()
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, ema.shadow))


def test_v_prediction_base_keeps_its_prediction_type_and_shape_through_save_and_load(tmp_path):
    """A base pre-trained with v-prediction is saved with it in its scheduler, so fine-tuning (whose training
    scheduler is made from the base's config) and every sampler generate builds from it predict v too; its
    U-Net has the widths and attention heads ``generator`` asked for, and keeps them when loaded."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    pixels, labels = client_images(8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = GeneratorParams(vae_steps=1, unet_steps=2, batch_size=4, prediction_type="v_prediction", snr_gamma=5.0,
                          attention_heads=2, unet_widths=[16, 32])
    pipe = pretrain_tiny(images, torch.from_numpy(labels), CLASSES, cfg)
    pipe.save_pretrained(tmp_path / "base")
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    attention = [m for m in loaded.unet.modules() if type(m).__name__ == "Attention"]
    assert list(loaded.unet.config.block_out_channels) == [16, 32] and attention
    # it trained channels-last, and comes back in the plain layout it is saved and fine-tuned in
    assert all(p.is_contiguous() for p in pipe.unet.parameters())
    assert {(m.heads, m.inner_dim) for m in attention} == {(2, 16), (2, 32)}  # the first level and the middle
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert DDPMScheduler.from_config(loaded.scheduler.config).config.prediction_type == "v_prediction"
    assert DPMSolverMultistepScheduler.from_config(loaded.scheduler.config).config.prediction_type == "v_prediction"


@pytest.mark.parametrize("vae_lr, expected", [(None, 2e-3), (3e-3, 3e-3)])
def test_the_vae_trains_at_vae_lr_else_at_the_unets_lr(monkeypatch, vae_lr, expected):
    """``generator.vae_lr`` is the VAE's own rate (600 steps at 3e-3 reconstruct real images the reference
    classifier reads as well as 1,500 at 1e-3); left null, the VAE trains at ``generator.lr`` as it always did."""
    import regl.generator.pretrain as pretrain

    seen = []
    monkeypatch.setattr(pretrain, "train_vae", lambda vae, images, steps, batch, lr, seed: seen.append(lr))
    monkeypatch.setattr(pretrain, "train_denoiser", lambda *args: None)
    pixels, labels = client_images(8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = GeneratorParams(vae_steps=1, unet_steps=2, batch_size=4, lr=2e-3, vae_lr=vae_lr, unet_widths=[16, 32],
                          attention_heads=2)
    pretrain_tiny(images, torch.from_numpy(labels), CLASSES, cfg)
    assert seen == [expected]


def test_the_unet_leaves_pretraining_with_its_ema_weights(monkeypatch):
    """Training channels-last replaces each parameter's data, so the EMA must take its views after the layout
    change: made before it, the EMA averages the untrained weights and writes them into orphaned storage, and the
    U-Net leaves with its raw last step instead."""
    import regl.generator.pretrain as pretrain

    made: list[EMA] = []

    class Recorded(EMA):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(pretrain, "EMA", Recorded)
    pixels, labels = client_images(8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = GeneratorParams(vae_steps=1, unet_steps=4, batch_size=4, ema_decay=0.9, unet_widths=[16, 32],
                          attention_heads=2)
    pipe = pretrain_tiny(images, torch.from_numpy(labels), CLASSES, cfg)
    ema = made[0]
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow))
    assert all(p.is_contiguous() for p in pipe.unet.parameters())


def test_channels_last_training_is_the_contiguous_maths(monkeypatch):
    """The layout and the fused AdamW change the order of float sums, nothing else: a VAE and U-Net pre-trained,
    and a LoRA fine-tuned from one base, a few steps with them end within rounding of the same training without
    them, and leave in the contiguous layout."""
    import copy
    from contextlib import nullcontext

    import regl.generator.lora as lora
    import regl.generator.pretrain as pretrain
    from regl.generator.lora import FinetuneParams, finetune
    from regl.generator.sample import GenerateParams

    pixels, labels = client_images(8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = GeneratorParams(vae_steps=3, unet_steps=3, batch_size=4, unet_widths=[16, 32], attention_heads=2)

    def weights(pipe, lora_only: bool = False) -> list[torch.Tensor]:
        assert all(p.is_contiguous() for part in (pipe.vae, pipe.unet) for p in part.parameters())
        return [p.detach().clone() for part in (pipe.vae, pipe.unet) for name, p in part.named_parameters()
                if "lora" in name or not lora_only]

    def fine_tuned(base) -> list[torch.Tensor]:
        pipe = copy.deepcopy(base)
        finetune(pipe, pixels, labels, CLASSES, FinetuneParams(steps=3, batch_size=4, lr=1e-2), GenerateParams(), 0)
        return weights(pipe, lora_only=True)

    base = pretrain_tiny(images, torch.from_numpy(labels), CLASSES, cfg)
    laid_out_base, laid_out_lora = weights(base), fine_tuned(base)
    for module in (pretrain, lora):
        monkeypatch.setattr(module, "channels_last", lambda *modules: nullcontext())
        monkeypatch.setattr(module, "adamw", lambda params, lr, weight_decay: torch.optim.AdamW(
            list(params), lr=lr, weight_decay=weight_decay))
    plain_lora = fine_tuned(base)
    plain_base = weights(pretrain_tiny(images, torch.from_numpy(labels), CLASSES, cfg))

    # Adam divides by the gradient's running size, so a rounding difference on a near-zero gradient can move a
    # weight by up to a step (lr 2e-3); that happens to a few weights, where a wrong layout moves them all.
    apart = sum(int(((a - b).abs() > 1e-3).sum()) for a, b in zip(laid_out_base, plain_base))
    assert len(laid_out_base) == len(plain_base) and apart / sum(a.numel() for a in plain_base) < 1e-3
    assert len(laid_out_lora) == len(plain_lora) > 0
    for a, b in zip(laid_out_lora, plain_lora):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)  # three steps at lr 1e-2 move them by up to 3e-2
