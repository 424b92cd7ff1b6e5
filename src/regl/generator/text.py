"""Captions: the ``{class}`` templates params hold, and their token ids and text-encoder states, the way
StableDiffusionPipeline encodes a prompt."""

from __future__ import annotations

import torch


def has_class_slot(text: str) -> str:
    """Validate a caption or prompt template: ``{class}`` and no other field."""
    if "{class}" not in text:
        raise ValueError("must contain {class}, where each class name goes")
    try:
        text.format(**{"class": "x"})
    except (KeyError, IndexError, ValueError):
        raise ValueError("may hold no other {...} field than {class}") from None
    return text


def caption_ids(tokenizer, captions: list[list[str]]) -> torch.Tensor:
    """Token ids of a 2-D table of captions, padded to the tokenizer's length: (rows, cols, tokens)."""
    flat = [c for row in captions for c in row]
    ids = tokenizer(flat, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.view(len(captions), len(captions[0]), -1)


@torch.no_grad()
def encode(pipe, captions: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Text-encoder hidden states of ``captions`` (what the U-Net cross-attends to)."""
    ids = caption_ids(pipe.tokenizer, [captions])[0].to(device)
    return pipe.text_encoder(ids)[0]
