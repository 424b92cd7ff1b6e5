"""Per-client LoRA on the U-Net: diffusers' text-to-image LoRA recipe, sized by params.

Freeze VAE, text encoder and U-Net; ``unet.add_adapter(LoraConfig(...))``; the base's denoising loss (its
scheduler's prediction type, Min-SNR-γ weighted when ``finetune.snr_gamma`` is set) on the client's
own images captioned with ``caption``; optionally prior preservation (images the base model generated of the
classes the client lacks, trained on alongside). Saved with ``save_lora_weights``, loaded with
``load_lora_weights``. On CUDA it trains with fp16 mixed precision through accelerate. The prior images are
generated with the `generate` section's sampler settings (scheduler, steps, batch size) at
``finetune.prior_guidance_scale``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from pydantic import Field, field_validator
from tqdm import tqdm

from regl.core.atomic import atomic_dir
from regl.core.checkpoint import Checkpoint
from regl.core.chunks import run_key
from regl.core.errors import ReglError
from regl.data.shards import read_shard
from regl.generator.base import load_pipeline
from regl.generator.layout import adamw, channels_last
from regl.generator.objective import denoising_loss
from regl.generator.sample import GenerateParams, generate, per_class
from regl.generator.space import encode_moments, to_model
from regl.generator.text import encode, has_class_slot
from regl.core.params import Section
from regl.core.seeding import derive_seed

log = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class FinetuneParams(Section):
    """Stage finetune_lora: one LoRA per client on its real images."""

    caption: str = "a photo of {class}"
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
                                      min_length=1)
    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    steps: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    empty_caption_share: float = Field(0.1, ge=0, lt=1)
    prior_images_per_class: int = Field(0, ge=0)
    prior_guidance_scale: float = Field(5.0, ge=0)
    snr_gamma: float | None = Field(None, gt=0)  # Min-SNR-γ loss weighting (regl.generator.objective); null = off
    seed: int = Field(0, ge=0)

    _caption = field_validator("caption")(classmethod(lambda cls, v: has_class_slot(v)))


def prior_images(pipe, labels: np.ndarray, class_names: list[str], cfg: FinetuneParams, sampler: GenerateParams,
                 client: int) -> tuple[np.ndarray, np.ndarray]:
    """Base-model images of the classes this client does not hold (prior preservation), before any adapter,
    with ``sampler``'s scheduler, steps and batch size at ``cfg.prior_guidance_scale``."""
    held = np.bincount(labels, minlength=len(class_names)) > 0
    counts = [0 if h else cfg.prior_images_per_class for h in held]
    prompts, latents, prior_labels = per_class(pipe, cfg.caption, class_names, counts, cfg.seed, "prior", client)
    if not prompts:
        return np.zeros((0,), np.float32), prior_labels
    settings = sampler.model_copy(update={"guidance_scale": cfg.prior_guidance_scale})
    images = generate(pipe, prompts, latents, settings, desc="prior")
    return images, prior_labels


def add_lora(unet, cfg: FinetuneParams, client: int) -> None:
    """The adapter, its Gaussian init drawn from a generator keyed by (seed, client), not global state."""
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                        target_modules=list(cfg.target_modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "lora_init", client))
        try:
            unet.add_adapter(config)
        except ValueError as exc:
            raise ReglError(f"params.yaml: finetune.target_modules = {list(cfg.target_modules)}: "
                            f"{str(exc).splitlines()[0]}") from None


def finetune(pipe: StableDiffusionPipeline, pixels: np.ndarray, labels: np.ndarray, class_names: list[str],
             cfg: FinetuneParams, sampler: GenerateParams, client: int, checkpoint: Checkpoint | None = None,
             on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Add a LoRA adapter to ``pipe.unet`` and train it on this client's images; returns a few training figures.
    ``sampler``: the `generate` section, whose sampler settings make the prior images. With ``checkpoint`` the
    training state (adapter, optimizer, random generator, losses) is saved every tenth of the steps and a run
    that finds one of its own resumes from it, ending with the bytes of an uninterrupted run.
    ``on_step(step)``: called after each step."""
    dev = pipe.unet.device
    accelerator = Accelerator(mixed_precision="fp16" if dev.type == "cuda" else "no", cpu=dev.type != "cuda")
    for part in (pipe.vae, pipe.text_encoder, pipe.unet):
        part.requires_grad_(False)

    images, targets = to_model(pixels, pipe), torch.tensor(np.asarray(labels, np.int64))
    prior_x = prior_y = None
    if cfg.prior_images_per_class > 0:
        gen_images, prior_labels = prior_images(pipe, labels, class_names, cfg, sampler, client)
        if len(prior_labels):
            prior_x = torch.from_numpy(gen_images).permute(0, 3, 1, 2) * 2 - 1
            prior_y = torch.from_numpy(prior_labels)
    mean, std = encode_moments(pipe.vae, images)
    prior_mean, prior_std = encode_moments(pipe.vae, prior_x) if prior_x is not None else (None, None)
    # one row per class, and a last row for the empty caption: trained on too, so that the unconditional
    # branch of classifier-free guidance moves with the adapter instead of being extrapolated away from it
    cond = encode(pipe, [cfg.caption.format(**{"class": c}) for c in class_names] + [""], dev).float()
    empty = len(class_names)
    sf = pipe.vae.config.scaling_factor
    # The training noise schedule, whatever sampler the pipeline carries (a multistep sampler's add_noise
    # only knows its inference timesteps)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    add_lora(pipe.unet, cfg, client)
    cast_training_params(pipe.unet, dtype=torch.float32)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.lr, weight_decay=1e-2)
    unet, opt = accelerator.prepare(pipe.unet, opt)
    unet.train()
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "finetune", client))
    num_t = scheduler.config.num_train_timesteps

    def batch_loss(m: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(y), (cfg.batch_size,), generator=gen)
        z = (m[idx] + s[idx] * torch.randn(m[idx].shape, generator=gen).to(dev)) * sf
        noise = torch.randn(z.shape, generator=gen).to(dev)
        t = torch.randint(num_t, (cfg.batch_size,), generator=gen).to(dev)
        rows = torch.where(torch.rand(cfg.batch_size, generator=gen) < cfg.empty_caption_share, empty, y[idx])
        with accelerator.autocast():
            pred = unet(scheduler.add_noise(z, noise, t), t, cond[rows.to(dev)]).sample
        return denoising_loss(scheduler, pred, z, noise, t, cfg.snr_gamma)

    losses: list[float] = []
    saved = checkpoint.load() if checkpoint else None
    if saved:
        with torch.no_grad():
            for p, value in zip(params, saved["adapter"]):
                p.copy_(value)
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(saved["scaler"])
        losses = saved["losses"]
        log.info("client %d: resuming the LoRA from step %d of %d (%s)", client, len(losses), cfg.steps,
                 checkpoint.path)
    every = max(1, cfg.steps // 10)
    with channels_last(unet):
        for step in tqdm(range(len(losses) + 1, cfg.steps + 1), desc=f"lora client {client}", mininterval=5):
            loss = batch_loss(mean, std, targets)
            if prior_mean is not None:
                loss = loss + batch_loss(prior_mean, prior_std, prior_y)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            losses.append(loss.item())
            if checkpoint is not None and step % every == 0 and step < cfg.steps:
                checkpoint.save({"adapter": [p.detach().clone() for p in params], "optimizer": opt.state_dict(),
                                 "generator": gen.get_state(), "losses": list(losses),
                                 "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None})
            if on_step is not None:
                on_step(step)
    if checkpoint is not None:
        checkpoint.remove()
    pipe.unet = accelerator.unwrap_model(unet)
    pipe.unet.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": cfg.steps, "images": len(targets), "prior_images": 0 if prior_y is None else len(prior_y),
            "final_loss": float(np.mean(tail)), "trainable_params": sum(p.numel() for p in params)}


def save_lora(pipe: StableDiffusionPipeline, folder: Path) -> None:
    """The U-Net adapter as diffusers LoRA safetensors (with its LoraConfig as metadata, so alpha survives)."""
    unet = pipe.unet
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    metadata = unet.peft_config["default"].to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: its order changes per process
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True,
                                              weight_name=WEIGHT_NAME, unet_lora_adapter_metadata=metadata)
    _sort_safetensors_metadata(Path(folder) / WEIGHT_NAME)


def _sort_safetensors_metadata(path: Path) -> None:
    """safetensors keeps metadata in a hash map, so a file with several metadata keys ("format" and
    "lora_adapter_metadata" here) lists them in a different order in each process. Rewrite the header with the
    keys sorted; the header keeps its length (same keys and values), so the tensor data offsets stay valid."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(sorted((header.get("__metadata__") or {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > size:  # never expected: same content, other order
        raise RuntimeError(f"{path}: cannot rewrite the safetensors header in place")
    path.write_bytes(raw[:8] + text.ljust(size, b" ") + raw[8 + size :])


def load_lora(pipe: StableDiffusionPipeline, folder: Path, scale: float | None = None) -> None:
    """The adapter in ``folder`` into ``pipe``'s U-Net; with ``scale``, merged into the U-Net's weights at that scale:
    the images of applying it at ``scale`` step by step, within float rounding, at the base model's cost (the
    unmerged adapter's extra products took about a quarter of a sampling step; docs/performance.md)."""
    path = Path(folder) / WEIGHT_NAME
    if not path.is_file():
        raise ReglError(f"{path}: LoRA weights not found (run `dvc repro finetune_lora`)")
    pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME)
    if scale is not None:
        pipe.fuse_lora(components=["unet"], lora_scale=scale)


def finetune_client(generator: Path, real_file: Path, cfg: FinetuneParams, sampler: GenerateParams, client: int,
                    out: Path, log: logging.Logger, checkpoint: Path | None = None,
                    on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Stage finetune_lora's work for one client, also a Flower node's (regl.federated.node_side): fine-tune the
    client's LoRA on ``real_file`` over the base generator in ``generator``; write it to the folder ``out`` (the
    adapter's safetensors and training.json) atomically; return its training figures. ``checkpoint``: where the training
    state is kept while it runs, so that a killed run resumes (keyed by params, inputs, code and thread count)."""
    shard = read_shard(real_file)
    pipe = load_pipeline(generator)
    log.info("client %d: %d images of %d class(es), LoRA r=%d on %s, %d steps on %s", client, len(shard),
             int((shard.class_counts() > 0).sum()), cfg.rank, ",".join(cfg.target_modules), cfg.steps,
             pipe.unet.device)
    state = None
    if checkpoint is not None:
        config = {"finetune": cfg.model_dump(), "generate": sampler.model_dump(), "client": client,
                  "threads": torch.get_num_threads()}
        state = Checkpoint(checkpoint, run_key("finetune_lora", config, [generator, real_file]), start="step 0")
    info = finetune(pipe, shard.pixels(), shard.labels, shard.class_names, cfg, sampler, client, state, on_step)
    log.info("client %d: final loss %.4f, %d trainable parameters", client, info["final_loss"],
             info["trainable_params"])
    with atomic_dir(out) as tmp:
        save_lora(pipe, tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
