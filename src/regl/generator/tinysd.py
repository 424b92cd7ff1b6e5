"""tiny-sd: a miniature Stable Diffusion built from configs alone (nothing is downloaded).

The four components have Stable Diffusion's classes and structure — ``AutoencoderKL`` (image side / 4 latents),
``UNet2DConditionModel`` with cross-attention, ``CLIPTextModel`` and a ``CLIPTokenizer`` — only narrower, so
every diffusers/peft call the pipeline makes on them is the call it makes on a real checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]
MAX_TOKENS = 32  # the text encoder's context; the default prompt takes 17


def build_tokenizer(corpus: Iterable[str]) -> CLIPTokenizer:
    """A CLIP tokenizer whose BPE vocabulary is learned from ``corpus`` (the captions and prompts it will see).

    Every byte keeps a token, so an unseen word still tokenizes (into pieces); the words of the corpus become
    whole tokens. Words are split with CLIP's normalizer and pre-tokenizer, so the result is a regular
    ``CLIPTokenizer`` (vocab.json + merges.txt when saved). The merges are learned here rather than by
    ``tokenizers``' BpeTrainer, which breaks ties between equally frequent pairs in hash-map order and so
    wrote a different vocabulary in each process.
    """
    splitter = Tokenizer(models.BPE())
    splitter.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    splitter.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                   r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    words: Counter[tuple[str, ...]] = Counter()
    for text in sorted(set(corpus)):
        for piece, _ in splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(text)):
            words[tuple(piece[:-1]) + (piece[-1] + "</w>",)] += 1
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Every byte also as a word end, so any word can be spelled.
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for tok in sorted(alphabet) + sorted(a + "</w>" for a in alphabet):
        vocab.setdefault(tok, len(vocab))
    merges = learn_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def learn_merges(words: Counter[tuple[str, ...]]) -> list[tuple[str, str]]:
    """Byte-pair merges until every word is one token: the most frequent adjacent pair first, ties broken by
    the pair itself (so the same corpus always gives the same merges)."""
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        words = Counter({_merge(word, best): n for word, n in words.items()})


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_vocabulary_files(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """vocab.json and merges.txt beside tokenizer.json: the two files CLIP's original tokenizer format uses."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))


def build_vae(channels: int, image_size: int, widths: tuple[int, ...] = (16, 32, 64)) -> AutoencoderKL:
    """An AutoencoderKL whose latents are 4 channels at image_size / 2**(len(widths)-1)."""
    return AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths, layers_per_block=1, norm_num_groups=8, sample_size=image_size)


def build_unet(latent_size: int, widths: tuple[int, ...] = (32, 64, 128), text_width: int = 64,
               heads: int = 8) -> UNet2DConditionModel:
    """A UNet2DConditionModel like SD's: cross-attention in every block but the deepest, ``heads`` attention heads
    in each (diffusers reads ``attention_head_dim`` as the number of heads, SD 1.x's legacy naming)."""
    n = len(widths)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(widths), norm_num_groups=8, cross_attention_dim=text_width, attention_head_dim=heads,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1))


def build_text_encoder(tokenizer: CLIPTokenizer, width: int = 64, layers: int = 2) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def build_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """Stable Diffusion's training noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps); the U-Net
    predicts ``prediction_type`` (epsilon, or v_prediction as in Stable Diffusion 2's 768 px models)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=prediction_type, clip_sample=False)


def assemble(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
             unet: UNet2DConditionModel, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """The components as a StableDiffusionPipeline (no safety checker: there is nothing for it to check)."""
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
