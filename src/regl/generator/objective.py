"""The denoising loss both trainers use (pre-training and the clients' LoRA): the target the scheduler's
``prediction_type`` names, optionally weighted by Min-SNR-γ.

- ``epsilon``: the U-Net predicts the noise ε; ``v_prediction``: it predicts v = √ᾱ_t ε − √(1−ᾱ_t) x₀
  (Salimans & Ho, 2022), diffusers' ``get_velocity``.
- Min-SNR-γ (Hang et al., ICCV 2023): each sample's MSE weighted by min(SNR_t, γ) / SNR_t for ε and
  min(SNR_t, γ) / (SNR_t + 1) for v, SNR_t = ᾱ_t / (1 − ᾱ_t) — diffusers' ``compute_snr`` and the weighting of its
  text-to-image training scripts (``--snr_gamma``). ``snr_gamma`` None: the plain mean squared error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

PREDICTION_TYPES = ("epsilon", "v_prediction")


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net is trained to output for ``latents`` noised with ``noise`` at timesteps ``t``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"prediction_type {kind!r}: expected one of {', '.join(PREDICTION_TYPES)}")


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Each sample's Min-SNR-γ loss weight."""
    snr = compute_snr(scheduler, t)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def denoising_loss(scheduler, pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """The batch's loss: MSE between ``pred`` and the target, each sample weighted by Min-SNR-γ when
    ``snr_gamma`` is set."""
    target = denoising_target(scheduler, latents, noise, t)
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample * min_snr_weights(scheduler, t, snr_gamma)).mean()
