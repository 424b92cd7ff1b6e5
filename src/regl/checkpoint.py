"""Resumable training state: saved atomically after every round, outside DVC's outputs, keyed by a
fingerprint of everything the run depends on, so a stale checkpoint (other params, other data) is never
resumed and a finished run leaves none behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from regl.atomic import atomic_file

CHECKPOINT_DIR = Path(".regl/checkpoints")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(config: dict[str, Any], files: list[Path]) -> str:
    """sha256 over the run's config and the bytes of its input files."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{f}:{file_digest(f)}".encode())
    return h.hexdigest()


class Checkpoint:
    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def load(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this run, else None."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # a checkpoint from another version or a torn disk: start over
            return None
        return saved["state"] if saved.get("key") == self.key else None

    def save(self, state: dict[str, Any]) -> None:
        with atomic_file(self.path) as tmp:
            torch.save({"key": self.key, "state": state}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
