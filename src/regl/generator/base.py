"""Where the base generator comes from: tiny-sd trained here, or a Stable Diffusion checkpoint named by a manifest.

``models/generator/`` always holds ``manifest.json``. For tiny-sd it sits beside the saved pipeline; for a real
checkpoint (a local diffusers folder or a hub id) it is all there is, and the later stages load the checkpoint
it names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from regl.core.device import resolve_device
from regl.core.errors import ReglError

MANIFEST = "manifest.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def checkpoint_manifest(base: str, revision: str | None) -> dict[str, Any]:
    """The manifest for ``generator.base``: a local diffusers folder (must exist) or a hub id."""
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ReglError(f"params.yaml: generator.base = {base!r}: folder has no model_index.json "
                            f"(expected a diffusers Stable Diffusion folder, a hub id, or 'tiny')")
        return {"kind": "checkpoint", "base": str(path.resolve()), "revision": revision}
    if _HUB_ID.match(base):
        return {"kind": "checkpoint", "base": base, "revision": revision}
    raise ReglError(f"params.yaml: generator.base = {base!r}: folder not found (expected 'tiny', an existing "
                    f"diffusers folder, or a hub id like stable-diffusion-v1-5/stable-diffusion-v1-5)")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ReglError(f"{path}: generator manifest not found (run `dvc repro pretrain_generator`)")
    return json.loads(path.read_text())


def load_pipeline(folder: str | Path, dev: torch.device | None = None) -> StableDiffusionPipeline:
    """The base pipeline that ``folder``'s manifest names, on ``dev`` (fp16 on CUDA)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    dev = dev or resolve_device("auto")
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if manifest["kind"] == "tiny":
        source, revision = folder, None
    else:
        source, revision = manifest["base"], manifest.get("revision")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, revision=revision, dtype=dtype,
                                                       safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise ReglError(f"{folder / MANIFEST}: cannot load the generator {source!r}: {reason}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def resolution(pipe: StableDiffusionPipeline) -> int:
    """The side in pixels the pipeline generates at by default."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
