"""The generator's params sections: `generator` (pretrain_generator), `finetune` (finetune_lora@<id>) and
`generate` (generate@<id>)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from regl.params import Section


def _has_class_slot(text: str) -> str:
    if "{class}" not in text:
        raise ValueError("must contain {class}, where each class name goes")
    try:
        text.format(**{"class": "x"})
    except (KeyError, IndexError, ValueError):
        raise ValueError("may hold no other {...} field than {class}") from None
    return text


class GeneratorParams(Section):
    """Stage pretrain_generator: tiny-sd's pre-training, or the checkpoint to use instead."""

    base: str = "tiny"
    revision: str | None = None
    public_style: Literal["none", "lowcontrast", "blur", "invert"] = "lowcontrast"
    vae_steps: int = Field(200, ge=1)
    unet_steps: int = Field(2500, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, le=1)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    empty_caption_share: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)


class FinetuneParams(Section):
    """Stage finetune_lora: one LoRA per client on its real images."""

    caption: str = "a photo of {class}"
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
                                      min_length=1)
    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    steps: int = Field(150, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    empty_caption_share: float = Field(0.1, ge=0, lt=1)
    prior_images_per_class: int = Field(0, ge=0)
    prior_guidance_scale: float = Field(5.0, ge=0)
    seed: int = Field(0, ge=0)

    _caption = field_validator("caption")(classmethod(lambda cls, v: _has_class_slot(v)))


class GenerateParams(Section):
    """Stage generate: synthetic images of every class from the base + the client's LoRA."""

    prompt: str = "A photo of {class}, real world images, high resolution"
    lora_scale: float = Field(0.8, ge=0, le=2)
    guidance_scale: float = Field(5.0, ge=0)
    scheduler: Literal["dpm", "ddim", "euler", "pndm"] = "dpm"
    steps: int = Field(20, ge=1)
    images_per_class: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, ge=0)

    _prompt = field_validator("prompt")(classmethod(lambda cls, v: _has_class_slot(v)))
