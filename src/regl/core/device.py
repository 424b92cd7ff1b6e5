"""The torch device a ``device`` param names; the one place that decides where work runs."""

from __future__ import annotations

import torch

from regl.core.errors import ReglError


def resolve_device(name: str = "auto", key: str = "train.device") -> torch.device:
    """auto = CUDA when present, else CPU; an explicit CUDA device must exist. ``key`` names the param in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReglError(f"params.yaml: {key} = {name!r}: no CUDA device here (use auto or cpu)")
    return torch.device(name)
