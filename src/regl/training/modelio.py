"""Classifier weights on disk: safetensors (deterministic bytes) with the architecture in its metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from regl.core.atomic import atomic_file
from regl.core.errors import ReglError
from regl.training.models import build_model


def save_model(path: str | Path, model: nn.Module, arch: dict[str, Any]) -> None:
    """``arch``: name, channels, num_classes, image_size and, for MOON's network, projection (what build_model
    needs), plus any provenance."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        # one metadata entry: safetensors keeps metadata in a hash map, so several keys come out in any order
        save_file(state, str(tmp), metadata={"regl": json.dumps(arch, sort_keys=True)})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ReglError(f"{path}: model not found (run the stage that writes it, e.g. `dvc repro`)")
    rerun = "re-run the stage that writes it (dvc repro)"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("regl", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # torn, truncated, not safetensors
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ReglError(f"{path}: not a readable safetensors model ({detail}); {rerun}") from None
    if not isinstance(meta, dict) or "name" not in meta:
        raise ReglError(f"{path}: not a regl model (no architecture in its metadata); {rerun}")
    try:
        model = build_model(meta["name"], meta["channels"], meta["num_classes"], meta["image_size"],
                            meta.get("projection", 0))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ReglError(f"{path}: its weights do not fit the architecture in its metadata ({detail}); "
                        f"{rerun}") from None
    return model.to(device), meta
