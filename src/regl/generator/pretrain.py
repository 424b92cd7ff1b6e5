"""Pre-train tiny-sd on the public pool: first the VAE (on both styles), then U-Net + text encoder.

The public pool is shown to the U-Net in ``public_style`` (a stand-in for the gap between Stable Diffusion's web
images and a client's camera); the VAE sees the pool in its own and in the shifted style, so — like Stable
Diffusion's VAE — it can represent both and the gap lives in the U-Net alone.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from pydantic import Field, ValidationInfo, field_validator
from tqdm import tqdm

from regl.generator import tinysd
from regl.generator.layout import adamw, channels_last
from regl.generator.objective import denoising_loss
from regl.generator.space import encode_moments
from regl.generator.styles import apply_style
from regl.generator.text import caption_ids
from regl.core.params import Section
from regl.core.seeding import derive_seed

log = logging.getLogger("regl.pretrain_generator")


class GeneratorParams(Section):
    """Stage pretrain_generator: tiny-sd's pre-training, or the checkpoint to use instead."""

    base: str = "tiny"
    revision: str | None = None
    public_style: Literal["none", "lowcontrast", "blur", "invert"] = "lowcontrast"
    vae_steps: int = Field(600, ge=1)
    vae_lr: float | None = Field(3e-3, gt=0, le=1)  # None: lr
    unet_steps: int = Field(1200, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0, le=1)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    empty_caption_share: float = Field(0.1, ge=0, lt=1)
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    snr_gamma: float | None = Field(5.0, gt=0)
    attention_heads: int = Field(1, ge=1)
    unet_widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=2, max_length=4,
                                   validate_default=True)
    seed: int = Field(0, ge=0)

    @field_validator("unet_widths")
    @classmethod
    def _widths_fit_groups_and_heads(cls, widths: list[int], info: ValidationInfo) -> list[int]:
        heads = info.data.get("attention_heads", 1)
        unit = 8 * heads // math.gcd(8, heads)  # divisible by GroupNorm's 8 groups and by the heads
        if any(w < 1 or w % unit for w in widths):
            raise ValueError(f"each width must be a positive multiple of {unit} (8 normalization groups, "
                             f"attention_heads = {heads})")
        return widths


# Captions the pool is trained with; the generation prompt need not be one of them (the vocabulary covers
# its words, and the class name is what the model must key on).
TEMPLATES = (
    "{class}",
    "a photo of {class}",
    "a photo of a {class}",
    "an image of {class}, high resolution",
    "a picture of {class}, real images",
    "{class}, a real world photo",
)


def vocabulary_corpus(class_names: list[str]) -> list[str]:
    """Text the tokenizer learns whole words from: every caption plus common prompt words."""
    extra = ["A photo of {class}, real world images, high resolution", "in the style of", "style"]
    return [t.format(**{"class": c}) for t in TEMPLATES + tuple(extra) for c in class_names]


class EMA:
    """Exponential moving average of parameters, with the usual warm-up (decay grows from 0.1 to ``decay``).
    One ``torch._foreach_*`` call per step over all tensors (a fused kernel on CUDA; on CPU the same per-tensor
    arithmetic, so the same bytes as a loop)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay, self.steps = [p.detach() for p in params], decay, 0
        self.shadow = [p.clone() for p in self.params]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = self.decay_at(self.steps)
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, self.params, alpha=1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        torch._foreach_copy_(self.params, self.shadow)


def train_vae(vae, images: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int) -> None:
    """MSE reconstruction plus a small KL term, AdamW with a cosine schedule. Runs where ``images`` are; the random
    draws come from a CPU generator whatever the device, so a CPU run gives the same bytes as before devices."""
    dev = images.device
    gen = torch.Generator().manual_seed(derive_seed(seed, "pretrain", "vae"))
    opt = adamw(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, min(50, steps // 10), steps)
    vae.train()
    bar = tqdm(range(steps), desc="vae", mininterval=5)
    with channels_last(vae):
        for _ in bar:
            x = images[torch.randint(len(images), (batch_size,), generator=gen)]
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(dev)
            loss = F.mse_loss(vae.decode(z).sample, x) + 1e-6 * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval()


def train_denoiser(pipe: StableDiffusionPipeline, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor,
                   class_names: list[str], cfg: GeneratorParams) -> None:
    """U-Net and text encoder together, the denoising loss of ``cfg.prediction_type`` (Min-SNR-γ weighted when
    ``cfg.snr_gamma`` is set), captions from TEMPLATES (some left empty)."""
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    dev = mean.device
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "pretrain", "unet"))
    table = caption_ids(pipe.tokenizer, [[t.format(**{"class": c}) for t in TEMPLATES] for c in class_names])
    empty = caption_ids(pipe.tokenizer, [[""]])[0, 0]
    sf = pipe.vae.config.scaling_factor
    params = list(unet.parameters()) + list(text_encoder.parameters())
    unet.train()
    text_encoder.train()
    bar = tqdm(range(cfg.unet_steps), desc="unet", mininterval=5)
    with channels_last(unet):  # first: the EMA keeps views of the parameters' data, which the layout change replaces
        opt = adamw(params, lr=cfg.lr, weight_decay=1e-2)
        sched = get_cosine_schedule_with_warmup(opt, min(100, cfg.unet_steps // 10), cfg.unet_steps)
        ema = EMA(params, cfg.ema_decay)
        for _ in bar:
            idx = torch.randint(len(labels), (cfg.batch_size,), generator=gen)
            z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(dev)) * sf
            noise = torch.randn(z.shape, generator=gen).to(dev)
            t = torch.randint(scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen).to(dev)
            template = torch.randint(len(TEMPLATES), (cfg.batch_size,), generator=gen)
            ids = table[labels[idx], template]
            drop = torch.rand(cfg.batch_size, generator=gen) < cfg.empty_caption_share
            ids[drop] = empty
            cond = text_encoder(ids.to(dev))[0]
            pred = unet(scheduler.add_noise(z, noise, t), t, cond).sample
            loss = denoising_loss(scheduler, pred, z, noise, t, cfg.snr_gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            ema.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        ema.copy_to_params()
    unet.eval()
    text_encoder.eval()


def pretrain_tiny(images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                  cfg: GeneratorParams, dev: torch.device | None = None) -> StableDiffusionPipeline:
    """Build tiny-sd for ``images`` (N, C, H, W in [-1, 1]) and train it on them on ``dev`` (default: CPU);
    returns the pipeline, on ``dev``."""
    dev = dev or torch.device("cpu")
    _, channels, size, _ = images.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "pretrain", "init"))
        tokenizer = tinysd.build_tokenizer(vocabulary_corpus(class_names))
        pipe = tinysd.assemble(tinysd.build_vae(channels, size), tinysd.build_text_encoder(tokenizer), tokenizer,
                               tinysd.build_unet(size // 4, tuple(cfg.unet_widths), heads=cfg.attention_heads),
                               cfg.prediction_type).to(dev)
    log.info("tiny-sd: VAE %.2f M, U-Net %.2f M, text encoder %.2f M parameters, %d tokens",
             tinysd.num_params(pipe.vae) / 1e6, tinysd.num_params(pipe.unet) / 1e6,
             tinysd.num_params(pipe.text_encoder) / 1e6, len(tokenizer))
    images = images.to(dev)
    shifted = apply_style(images, cfg.public_style)
    both = torch.cat([images, shifted]) if cfg.public_style != "none" else images
    train_vae(pipe.vae, both, cfg.vae_steps, cfg.batch_size // 2, cfg.vae_lr or cfg.lr, cfg.seed)
    mean, std = encode_moments(pipe.vae, shifted)
    # Stable Diffusion's scaling factor is 1 / std of its latents; ours is measured the same way.
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "pretrain", "scale"))
    spread = (mean + std * torch.randn(mean.shape, generator=gen).to(dev)).std().item()
    pipe.vae.register_to_config(scaling_factor=round(1.0 / spread, 5))
    train_denoiser(pipe, mean, std, labels, class_names, cfg)
    return pipe
